"""The frozen-backbone table: trained heads vs post-hoc quantizers on the same cached features.

  python benchmarks/pretrained_table.py --workdir runs/pretable --seeds 0 1 2 --out docs/pretrained_table.md

Every row uses the same features: configs/cifar_prefix_pretrained.py (frozen ImageNet
EfficientNet-Lite0, 160 px, the shared feature cache), mAP@1000 on the CIFAR prefix,
mean +- std over seeds.  Trained heads run main.py (one process each, sequentially);
``--method NAME:--config.a=1,--config.b=2`` adds or replaces a method (for screens).
Post-hoc rows fit ITQ / H2Q / LSH on the clean training features with each seed.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BITS = (16, 32, 64)
METHODS = {
    # The project's NSH recipe (configs/cifar_prefix_pretrained.py).
    "nsh": [],
    # The same recipe with SortedNCE switched off (the control).
    "nsh-no-sort": ["--config.loss.sorted_weight=0"],
    # Contrastive hashing without sorting (CIBHash-style): NT-Xent on sign codes.
    "contrastive": ["--config.loss.name=contrastive"],
}


def run_method(workdir, name, overrides, seed, steps):
  wd = os.path.join(workdir, f"{name}_s{seed}")
  if not os.path.exists(os.path.join(wd, "metrics.json")):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"),
           "--config=configs/cifar_prefix_pretrained.py", f"--workdir={wd}",
           f"--config.seed={seed}"] + ([f"--config.train.steps={steps}"] if steps else []) + overrides
    t = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
      sys.exit(f"{name} seed {seed} failed:\n{res.stderr[-3000:]}")
    print(f"  {name} seed {seed}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
  m = json.load(open(os.path.join(wd, "metrics.json")))
  return {b: m["by_bits"][str(b)]["map"] for b in BITS if str(b) in m["by_bits"]}, m


def posthoc(seeds):
  """ITQ / H2Q / LSH on the cached clean features, per seed."""
  from configs import cifar_prefix_pretrained
  from nsh_jax import feature_cache, householder, input_pipeline, metrics, train
  c = cifar_prefix_pretrained.get_config()
  os.chdir(ROOT)
  splits = input_pipeline.load(c)
  variables, digest = train.backbone_variables(c)
  fs = feature_cache.load_or_extract(c, splits, variables, digest, log=lambda *a: None)
  rows = {}
  for name in ("itq", "h2q", "lsh"):
    rows[f"{name} on features"] = [
        {b: metrics.mean_average_precision(*(householder.apply(q, x) for x in (fs.query, fs.database)),
                                           splits.query_labels, splits.db_labels, 1000)
         for b in BITS for q in [householder.fit(name, fs.train, bits=b, seed=s)]}
        for s in seeds]
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/pretable")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
  p.add_argument("--method", action="append", default=[],
                 help="NAME:comma-separated overrides (adds or replaces a method)")
  p.add_argument("--only", nargs="*", help="run only these methods")
  p.add_argument("--no-posthoc", action="store_true")
  p.add_argument("--out", help="also write the table (markdown) here")
  args = p.parse_args()
  methods = dict(METHODS)
  for spec in args.method:
    name, _, overrides = spec.partition(":")
    # Split at ",--" so that a value may hold commas: --config.model.bit_list=(64,)
    methods[name] = [o if o.startswith("--") else "--" + o for o in overrides.split(",--") if o]
  if args.only:
    methods = {k: v for k, v in methods.items() if k in args.only}
  rows = {} if args.no_posthoc else posthoc(args.seeds)
  for name, overrides in methods.items():
    rows[name] = [run_method(args.workdir, name, overrides, s, args.steps)[0] for s in args.seeds]
  lines = ["| method | " + " | ".join(f"{b} bits" for b in BITS) + " |",
           "|---|" + "---|" * len(BITS)]
  for name, per_seed in rows.items():
    cells = []
    for b in BITS:
      v = np.array([r[b] for r in per_seed if b in r])
      cells.append("-" if not len(v) else
                   f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"<!-- python benchmarks/pretrained_table.py {' '.join(sys.argv[1:])} -->\n{table}\n")


if __name__ == "__main__":
  main()
