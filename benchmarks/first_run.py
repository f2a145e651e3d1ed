"""The first run's recipe and its ablations: configs/default.py on the bundled digits, and
the same recipe on data it was never tuned on (the CIFAR-10 prefix, ``natural`` preset).

  python benchmarks/first_run.py --workdir runs/first_run --out docs/first_run_table.md

Each row is main.py (one process, sequentially) with the overrides shown, mAP@1000 as
mean +- std over ``--seeds`` (the seed also draws the digits query split), beside
``itq-pixels`` of the same splits; ``--rows`` picks rows by name.  Wall-clock seconds
per run are reported too (whole command, start-up included; noisy when the machine is busy).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = "--config.dataset.name=npz:" + os.path.join(ROOT, "..", "shared", "data",
                                                      "cifar10_prefix.npz")
ROWS = {  # name -> (config, overrides, seeds: 'all' or one)
    "default": ("configs/default.py", [], "all"),
    "no-sort": ("configs/default.py", ["--config.loss.sorted_weight=0"], "all"),
    "contrastive": ("configs/default.py", ["--config.loss.name=contrastive"], "all"),
    "sign-codes": ("configs/default.py", ["--config.quantizer=sign"], "one"),
    "natural-preset": ("configs/default.py:natural", [], "one"),
    "300-steps": ("configs/default.py", ["--config.train.steps=300"], "one"),
    "cifar-natural": ("configs/default.py:natural", [CIFAR], "all"),
    "cifar-natural-no-sort": ("configs/default.py:natural",
                              [CIFAR, "--config.loss.sorted_weight=0"], "all"),
}


def run(workdir, name, config, overrides, seed):
  wd = os.path.join(workdir, f"{name}_s{seed}")
  if not os.path.exists(os.path.join(wd, "metrics.json")):
    t = time.time()
    res = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}",
                          f"--workdir={wd}", f"--config.seed={seed}"] + overrides,
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
      sys.exit(f"{name} seed {seed} failed: {res.stderr.strip().splitlines()[-1]}")
    with open(os.path.join(wd, "wall_seconds.txt"), "w") as f:
      f.write(f"{time.time() - t:.1f}")
  m = json.load(open(os.path.join(wd, "metrics.json")))
  wall = float(open(os.path.join(wd, "wall_seconds.txt")).read())
  return m, wall


def cell(values):
  v = np.asarray(values)
  return f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ± {v.std():.4f}"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/first_run")
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--rows", nargs="+", default=list(ROWS))
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  lines = ["| row | overrides | seeds | mAP@1000 16 / 32 / 64 bits | itq-pixels 16 / 32 / 64 | "
           "wall s |", "|---|---|---|---|---|---|"]
  for name in args.rows:
    config, overrides, which = ROWS[name]
    seeds = args.seeds if which == "all" else args.seeds[:1]
    model, itq, walls = {b: [] for b in (16, 32, 64)}, {b: [] for b in (16, 32, 64)}, []
    for seed in seeds:
      m, wall = run(args.workdir, name, config, overrides, seed)
      walls.append(wall)
      for b in (16, 32, 64):
        model[b].append(m["by_bits"][str(b)]["map"])
        itq[b].append(m["baselines"]["itq-pixels"][str(b)])
    shown = " ".join(o.replace(CIFAR, "CIFAR prefix") for o in [f"--config={config}"] + overrides)
    lines.append(f"| {name} | `{shown}` | {','.join(map(str, seeds))} | "
                 f"{' / '.join(cell(model[b]) for b in (16, 32, 64))} | "
                 f"{' / '.join(cell(itq[b]) for b in (16, 32, 64))} | {np.mean(walls):.0f} |")
    print(lines[-1], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
