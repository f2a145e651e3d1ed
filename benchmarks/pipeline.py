"""Does the input pipeline keep up?  Steps/s of the NSH train step fed by the real
pipeline vs the same step fed one pre-made device batch, same run.

The real path is the trainer's: ``input_pipeline.load`` (the shared CIFAR-10
prefix ``.npz``, or digits), ``input_pipeline.train_batches`` (step-indexed
shuffle, background prefetch thread), ``jax.make_array_from_process_local_data``
onto the ``data`` mesh, and two-view augmentation inside the jitted step.
Augmentation is inside the step on both sides, so the ratio isolates the host
side: gathering, queueing and host-to-device transfer.  Like ``main.py``, the
script applies :func:`nsh_jax.malloc.tune` first.

  python benchmarks/pipeline.py [--dataset npz:../shared/data/cifar10_prefix.npz]
                                [--batches 128 256] [--steps 30]
"""

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from nsh_jax import malloc  # noqa: E402

# The trainer's conditions: main.py tunes malloc before anything starts a thread.
MALLOC_TUNED = malloc.tune()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import base  # noqa: E402
from nsh_jax import input_pipeline, state as state_lib, step as step_lib  # noqa: E402
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dataset", default="npz:../shared/data/cifar10_prefix.npz")
  ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args()
  print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}, {jax.device_count()} device(s)); {args.dataset}; "
        f"NSH step, small CNN, 64 bits; {args.steps} steps, best of {args.repeats}; "
        f"malloc tuned as in main.py: {MALLOC_TUNED}")
  print("| batch | real pipeline (steps/s) | one pre-made device batch (steps/s) | ratio |")
  print("|---|---|---|---|")
  for batch in args.batches:
    c = base.get_config()
    c.dataset.name, c.train.batch_size = args.dataset, batch
    splits = input_pipeline.load(c)
    mesh = state_lib.make_mesh()
    data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    step = step_lib.make_train_step(c, mesh)
    state = jax.device_put(
        state_lib.create_train_state(c, jax.random.PRNGKey(0), (32, 32, 3)), repl)
    fixed_x = jax.device_put(splits.train_images[:batch], data)
    fixed_y = jax.device_put(splits.train_labels[:batch], data)
    state, m = step(state, fixed_x, fixed_y)  # compile
    jax.block_until_ready(m)

    def premade(state):
      t = time.perf_counter()
      for _ in range(args.steps):
        state, m = step(state, fixed_x, fixed_y)
      jax.block_until_ready(m)
      return state, args.steps / (time.perf_counter() - t)

    def real(state, start):
      t = time.perf_counter()
      for _, x, y in input_pipeline.train_batches(splits.train_images, splits.train_labels,
                                                  batch, c.seed, start, start + args.steps):
        state, m = step(state, jax.make_array_from_process_local_data(data, x),
                        jax.make_array_from_process_local_data(data, y))
      jax.block_until_ready(m)
      return state, args.steps / (time.perf_counter() - t)

    r_real, r_pre = [], []
    for rep in range(args.repeats):  # interleaved, so drift hits both alike
      state, r = real(state, rep * args.steps)
      r_real.append(r)
      state, r = premade(state)
      r_pre.append(r)
    a, b = max(r_real), max(r_pre)
    print(f"| {batch} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
  main()
