"""What a backbone that trains costs here: the step on cached trunk activations against the
heads-only step on cached features, and the trunk cache's size for the paper's split.

  python benchmarks/trainable_top.py [--config configs/cifar.py] [--blocks 1 2] [--steps 5]

For each ``model.train_blocks = K``: the trainer's step (``step.make_train_step``) on random
cached views of the right shape (``model.input='trunk'``: the last K blocks and head of the
backbone, and the hash heads), steps/s (median of ``--steps`` after compilation) and XLA's
compiled memory (temp + arguments + outputs), beside the same for the heads alone
(``model.input='features'``); and the bytes the trunk cache holds for the config's split
(views of the training images and clean activations of every image, float32).
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import malloc, xla_cpu  # noqa: E402

malloc.tune()
xla_cpu.apply_defaults()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import runs  # noqa: E402
from nsh_jax import encoder_input, state as state_lib, step as step_lib  # noqa: E402


def measure(config, steps: int):
  """``(steps/s, compiled GiB, per-example floats)`` of the trainer's step for ``config``."""
  inputs = encoder_input.create(config)
  mesh = state_lib.make_mesh()
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), inputs)
  fn = step_lib.make_train_step(config, mesh, inputs.views)
  width = int(np.prod(inputs.shape))
  batch = np.random.default_rng(0).normal(
      size=(config.train.batch_size, config.features.views, width)).astype(np.float32)
  labels = np.zeros(config.train.batch_size, np.int32)
  compiled = fn.lower(state, batch, labels).compile()
  mem = compiled.memory_analysis()
  gib = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**30
  state, m = compiled(state, batch, labels)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = compiled(state, batch, labels)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return 1 / float(np.median(times)), gib, width


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar.py")
  p.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  base = runs.load_config(args.config)
  n_train = base.dataset.train_per_class * 10 if base.dataset.protocol == "paper" else None
  print(f"{args.config}, {base.model.backbone} at {base.dataset.image_size} px, batch "
        f"{base.train.batch_size}, {base.features.views} cached views; {os.cpu_count()} CPU "
        f"cores, jax {jax.__version__} ({jax.default_backend()})\n")
  print("| trained | steps/s | compiled memory (GiB) | floats per cached view | "
        "trunk cache for the split (GB) |")
  print("|---|---|---|---|---|")
  rate, gib, width = measure(base, args.steps)
  print(f"| heads only (cached features) | {rate:.2f} | {gib:.2f} | {width:,} | - |", flush=True)
  for k in args.blocks:
    c = base.copy_and_resolve_references()
    c.model.input, c.model.frozen, c.model.train_blocks = "trunk", False, k
    rate, gib, width = measure(c, args.steps)
    size = ""
    if n_train:  # views of the training images + clean activations of all 60,000 images
      size = f"{(n_train * c.features.views + 60_000) * width * 4 / 1e9:.2f}"
    print(f"| last {k} block(s) + head (cached trunk) | {rate:.2f} | {gib:.2f} | {width:,} | "
          f"{size} |", flush=True)


if __name__ == "__main__":
  main()
