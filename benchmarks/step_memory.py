"""Compiled memory of one training step vs batch size (XLA's memory analysis; nothing runs).

  NSH_JAX_CACHE=runs/feature_cache python benchmarks/step_memory.py --batches 1024 2048 4096

configs/cifar_prefix_pretrained.py (heads on cached frozen features, 16/32/64-bit prefixes): the
step as the trainer builds it (``step.make_train_step``), lowered and compiled for each batch,
with and without ``train.diagnostics`` and with SortedNCE off (``loss.sorted_weight=0``, the
no-sort control).  Temp = XLA's temporary buffers, the part that grows with the batch.
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
from nsh_jax import input_pipeline, state as state_lib, step as step_lib, train  # noqa: E402

VARIANTS = {"NSH": {}, "NSH + diagnostics": {"train.diagnostics": True},
            "no-sort control": {"loss.sorted_weight": 0.0}}


def temp_gib(config, inputs, mesh, batch: int, overrides: dict) -> float:
  c = config.copy_and_resolve_references()
  c.train.batch_size = batch
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), inputs.shape, inputs.backbone)
  fn = step_lib.make_train_step(c, mesh, None, inputs.views)
  first = np.asarray(inputs.train[:1])  # one training example: its shape and dtype
  spec = jax.ShapeDtypeStruct((batch,) + first.shape[1:], first.dtype)
  compiled = fn.lower(state, spec, jax.ShapeDtypeStruct((batch,), jnp.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2 ** 30


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", type=int, nargs="+", default=[1024, 2048, 4096])
  args = p.parse_args()
  os.chdir(ROOT)
  config = cifar_prefix_pretrained.get_config()
  inputs = train.model_inputs(config, input_pipeline.load(config), log=lambda *a: None)
  mesh = state_lib.make_mesh()
  print("| batch | " + " | ".join(f"{v} (GiB)" for v in VARIANTS) + " |")
  print("|---|" + "---|" * len(VARIANTS))
  for batch in args.batches:
    cells = [f"{temp_gib(config, inputs, mesh, batch, o):.2f}" for o in VARIANTS.values()]
    print(f"| {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
