"""Optimizer state and step memory of a frozen backbone, with and without the optimizer mask.

  python benchmarks/frozen_optimizer.py [--batch 64] [--compile]

``configs/cifar.py:vgg16`` shapes (VGG-16 fc7 frozen at 224 px, 16/32/64-bit heads): the
optimizer state's bytes counted from ``jax.eval_shape`` (nothing is allocated) for the
optimizer as it is (``model.frozen`` masks the backbone out of AdamW: no moments, no
decay) and as it was before (every backbone weight carried Adam moments).  ``--compile``
adds XLA's compiled memory analysis of the whole train step for both (argument and temp
bytes; the state is donated, so arguments hold params + optimizer state).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from configs import cifar  # noqa: E402
from nsh_jax import optim, state as state_lib, step as step_lib  # noqa: E402


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _unmasked(cfg):
  """The optimizer before the fix: AdamW (after the clip) over every parameter."""
  return optax.chain(optax.clip_by_global_norm(cfg.train.grad_clip),
                     optim.OPTIMIZERS.get(cfg.train.optimizer)(optim.learning_rate_schedule(cfg),
                                                               cfg.train))


def _state_shape(config, masked: bool):
  """``(config, abstract TrainState)``; the state carries its optimizer (``tx``)."""
  c = config.copy_and_resolve_references()
  c.model.pretrained = False  # shapes only: no Keras weights needed
  real = optim.create_optimizer
  if not masked:
    optim.create_optimizer = _unmasked
  try:
    return c, jax.eval_shape(lambda: state_lib.create_train_state(
        c, jax.random.PRNGKey(0), (224, 224, 3)))
  finally:
    optim.create_optimizer = real


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--compile", action="store_true")
  args = p.parse_args()
  config = cifar.get_config("vgg16")
  mesh = state_lib.make_mesh()
  print(f"| optimizer | params (MiB) | optimizer state (MiB) |"
        + (" step arguments (MiB) | step temp (MiB) |" if args.compile else ""))
  print("|---|---|---|" + ("---|---|" if args.compile else ""))
  for name, masked in (("before: AdamW over every weight", False),
                       ("now: frozen backbone masked out", True)):
    c, shape = _state_shape(config, masked)
    row = f"| {name} | {_bytes(shape.params) / 2**20:.1f} | {_bytes(shape.opt_state) / 2**20:.1f} |"
    if args.compile:
      c.train.batch_size = args.batch
      fn = step_lib.make_train_step(c, mesh)
      compiled = fn.lower(shape, jax.ShapeDtypeStruct((args.batch, 32, 32, 3), jnp.uint8),
                          jax.ShapeDtypeStruct((args.batch,), jnp.int32)).compile()
      mem = compiled.memory_analysis()
      row += f" {mem.argument_size_in_bytes / 2**20:.1f} | {mem.temp_size_in_bytes / 2**20:.1f} |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
