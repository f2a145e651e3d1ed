"""Compiled memory of one training step vs batch size (XLA's memory analysis; nothing runs).

  python benchmarks/step_memory.py --batches 1024 2048 4096 8192 16384 --fit 16 80 141

configs/cifar_prefix_pretrained.py (heads on cached frozen features, 16/32/64-bit prefixes): the
step as the trainer builds it (``step.make_train_step``), lowered and compiled for each batch,
with and without ``train.diagnostics`` and with SortedNCE off (``loss.sorted_weight=0``, the
no-sort control).  Temp = XLA's temporary buffers, the part that grows with the batch.

``--fit GIB ...``: the largest batch (a multiple of 256) whose NSH step's temp + argument +
output bytes fit each budget -- a parabola through three of the measured rows, then checked
by compiling at that batch and the next multiple (compiled on this machine's XLA:CPU; an accelerator's
compiler fuses differently, so treat it as an estimate there).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import cifar_prefix_pretrained  # noqa: E402
from nsh_jax import (encoder_input, input_pipeline, state as state_lib,  # noqa: E402
                     step as step_lib)

VARIANTS = {"NSH": {}, "NSH + diagnostics": {"train.diagnostics": True},
            "no-sort control": {"loss.sorted_weight": 0.0}}


_MEMO = {}  # (batch, overrides) -> (temp GiB, total GiB): the fit revisits batches


def step_gib(config, inputs, mesh, batch: int, overrides: dict, total: bool = False) -> float:
  key = (batch, tuple(sorted(overrides.items())))
  if key not in _MEMO:
    _MEMO[key] = _step_gib(config, inputs, mesh, batch, overrides)
  return _MEMO[key][int(total)]


def _step_gib(config, inputs, mesh, batch: int, overrides: dict):
  c = config.copy_and_resolve_references()
  c.train.batch_size = batch
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), inputs)
  fn = step_lib.make_train_step(c, mesh, inputs.views)
  first = np.asarray(inputs.train[:1])  # one training example: its shape and dtype
  spec = jax.ShapeDtypeStruct((batch,) + first.shape[1:], first.dtype)
  compiled = fn.lower(state, spec, jax.ShapeDtypeStruct((batch,), jnp.int32)).compile()
  mem = compiled.memory_analysis()
  temp = mem.temp_size_in_bytes
  return temp / 2 ** 30, (temp + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2 ** 30


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
  p.add_argument("--fit", type=float, nargs="*", default=[], help="budgets in GiB")
  p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                 help="the columns to compile (the fit uses NSH's step whatever this says)")
  args = p.parse_args()
  variants = {v: VARIANTS[v] for v in args.variants}
  os.chdir(ROOT)
  config = cifar_prefix_pretrained.get_config()
  inputs = encoder_input.create(config, input_pipeline.load(config), log=lambda *a: None)
  mesh = state_lib.make_mesh()
  print("| batch | " + " | ".join(f"{v} (GiB)" for v in variants) + " |")
  print("|---|" + "---|" * len(variants))
  for batch in args.batches:
    cells = [f"{step_gib(config, inputs, mesh, batch, o):.2f}" for o in variants.values()]
    print(f"| {batch} | " + " | ".join(cells) + " |", flush=True)
  if args.fit:
    total = lambda b: step_gib(config, inputs, mesh, b, {}, total=True)
    # The step holds [n, n] arrays outside SortedNCE (NT-Xent's logits): a parabola
    # through three measured batches, then compiled checks around its prediction.
    xs = sorted(args.batches)[::max(1, (len(args.batches) - 1) // 2)][:3]
    coef = np.polyfit(xs, [total(b) for b in xs], 2)
    print("\n| budget (GiB) | largest batch (NSH step, 64 bits) | its GiB | next +256 GiB |")
    print("|---|---|---|---|")
    for budget in args.fit:
      roots = np.roots(coef - np.array([0, 0, budget]))
      b = max(256, int(max(r.real for r in roots if abs(r.imag) < 1e-9)) // 256 * 256)
      for _ in range(8):  # a few compiled steps of 256 towards the boundary
        if total(b) > budget and b > 256:
          b -= 256
        elif total(b + 256) <= budget:
          b += 256
        else:
          break
      print(f"| {budget:g} | {b} | {total(b):.2f} | {total(b + 256):.2f} |", flush=True)


if __name__ == "__main__":
  main()
