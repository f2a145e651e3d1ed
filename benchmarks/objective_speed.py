"""Training cost per step of every objective of the paper table, side by side in one process.

  python benchmarks/objective_speed.py [--config configs/cifar_prefix_pretrained.py]
      [--batch 256] [--head 1024] [--steps 20] [--rounds 5]

The step as the trainer builds it (``step.make_train_step``: views drawn from the feature cache,
forward and backward of the heads, the objective at every code length, AdamW), on the config's
cached frozen features (the cache is extracted on first use), for each method the way
``benchmarks/pretrained_table.py`` runs it (its ``METHODS`` overrides).  Interleaved rounds:
each round times ``--steps`` steps of every method in turn (one sync at the end of each), so
machine noise hits them alike; the table gives the median steps/s over the rounds and the
median of the per-round ratios to NSH's rate.  Compilation is left out (timed once, shown apart).
"""

import argparse
import ast
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from benchmarks.pretrained_table import METHODS, load_config  # noqa: E402
from nsh_jax import input_pipeline, state as state_lib, step as step_lib, train  # noqa: E402


def _config(base, method: str, batch: int, head: int):
  c = base.copy_and_resolve_references()
  c.train.batch_size, c.model.head_hidden = batch, head
  for flag in METHODS[method]:  # "--config.loss.name=cibhash", "--config.loss.sorted_weight=0"
    key, value = flag[len("--config."):].split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a bare string
    c.update_from_flattened_dict({key: value})
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar_prefix_pretrained.py")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--head", type=int, default=1024, help="model.head_hidden (0: linear heads)")
  p.add_argument("--steps", type=int, default=20, help="steps per method per round")
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  os.chdir(ROOT)
  base = load_config(args.config)
  inputs = train.model_inputs(base, input_pipeline.load(base), log=lambda *a: None)
  mesh = state_lib.make_mesh()
  data = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(4):  # a few real batches, cycled
    rows = np.sort(rng.choice(len(inputs.train), args.batch, replace=False))
    batches.append((jax.device_put(np.asarray(inputs.train[rows]), data),
                    jax.device_put(np.zeros(args.batch, np.int32), data)))

  runners, compile_s = {}, {}
  for method in METHODS:
    c = _config(base, method, args.batch, args.head)
    state = state_lib.create_train_state(c, jax.random.PRNGKey(0), inputs.shape, inputs.backbone)
    fn = step_lib.make_train_step(c, mesh, None, inputs.views)
    t = time.perf_counter()
    compiled = fn.lower(state, *batches[0]).compile()
    compile_s[method] = time.perf_counter() - t
    box = [state]

    def run(steps, compiled=compiled, box=box):
      for i in range(steps):
        box[0], m = compiled(box[0], *batches[i % len(batches)])
      return jax.block_until_ready(m)

    assert np.isfinite(float(run(2)["loss"])), f"{method}: non-finite loss"  # warm-up
    runners[method] = run

  rates = {m: [] for m in METHODS}
  for _ in range(args.rounds):
    for method, run in runners.items():
      t = time.perf_counter()
      run(args.steps)
      rates[method].append(args.steps / (time.perf_counter() - t))
  ref = np.asarray(rates["nsh"])
  print(f"batch {args.batch}, head_hidden {args.head}, {args.config}; {jax.device_count()} "
        f"{jax.default_backend()} device(s); {args.rounds} rounds x {args.steps} steps")
  print("\n| method | steps/s (median) | ratio to NSH (median per round) | compile (s) |")
  print("|---|---|---|---|")
  for method in METHODS:
    r = np.asarray(rates[method])
    print(f"| {method} | {np.median(r):.2f} | {np.median(r / ref):.2f} | {compile_s[method]:.1f} |")


if __name__ == "__main__":
  main()
