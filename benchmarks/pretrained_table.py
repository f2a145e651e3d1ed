"""The frozen-backbone table under an honest protocol: selection on validation, equal budgets, paired seeds.

  python benchmarks/pretrained_table.py --config configs/cifar.py --workdir runs/lite2_table \
      --trials 4 --seeds 0 1 2 --out runs/lite2_table.md      # Lite2 (the default); :lite0 for Lite0
  python benchmarks/pretrained_table.py --config configs/cifar_prefix_pretrained.py \
      --val-per-class 50 --workdir runs/prefix_table --out docs/pretrained_table.md

For each trained method (NSH; NSH without SortedNCE; contrastive hashing on sign codes; the
NSH paper's Table 1 baselines CIBHash, GreedyHash, BiHalf as their authors' code computes them):

1. **Selection, on validation queries only.**  ``--trials`` settings per method, drawn by one
   seeded random search from that method's grid (the same dimensions for every method where
   they apply: learning rate, steps, head width, the softmax temperature; plus one of its
   own: SoftSort temperature, KL weight, cubic weight, bi-half gamma), trained with seed 0;
   the setting with the best mean validation mAP over the lengths is kept.  Every method
   gets the same number of trials.
2. **Seeds.**  The kept setting is trained with seeds ``--seeds``: seed ``s`` sets
   ``config.seed``, ``dataset.split_seed`` (its own training subset, queries and validation
   queries) and, through ``features.seed = -1``, its own cached views.
3. **The table**, on the test queries: mean +- sample std (ddof = 1) per length, the paired
   per-seed differences NSH - control, each trained row with sign codes and with ITQ fitted on
   its learned layer (``--mode=quantize``), and ITQ / H2Q / LSH on the same seed's frozen features.

Runs live in ``WORKDIR/<method>-<digest>``: the digest covers the overrides and the code
version, and a run dir is reused only if its ``metrics.json`` records exactly the config asked
for and a clean checkout at the current commit -- never a run of other code or another config.
So a table interrupted (or run in parts, ``--only``) resumes where it stopped at the same
commit; ``--out`` is rewritten after every method with the rows so far.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BITS = (16, 32, 64)
METHODS = {  # name -> fixed overrides
    "nsh": [],
    "nsh-no-sort": ["--config.loss.sorted_weight=0"],
    "contrastive": ["--config.loss.name=contrastive"],
    "cibhash": ["--config.loss.name=cibhash"],
    "greedyhash": ["--config.loss.name=greedyhash"],
    "bihalf": ["--config.loss.name=bihalf"],
}
# Every run: no per-run pixel/feature baselines or plots (posthoc() computes the
# baselines once per seed), and only the quantizers the table reads.
RUN_FLAGS = ["--config.eval.baselines=False", "--config.eval.plots=False",
             "--config.eval.quantizers=('sign','itq')"]
SHARED_GRID = {  # dimensions every method is searched over
    "train.learning_rate": [3e-4, 1e-3, 3e-3],
    "train.steps": [500, 1000, 2000],
    "model.head_hidden": [0, 1024],
}
TEMPERATURE = {"loss.temperature": [0.1, 0.2, 0.3, 0.5]}  # NT-Xent / SortedNCE's softmax
# One more dimension per method, its own (the same size of search for each).
OWN_GRID = {
    "nsh": dict(TEMPERATURE, **{"loss.sort_temperature": [1 / 32, 1 / 16, 1 / 8, 1 / 4]}),
    "nsh-no-sort": TEMPERATURE,
    "contrastive": TEMPERATURE,
    "cibhash": dict(TEMPERATURE, **{"loss.kl_weight": [1e-4, 1e-3, 1e-2]}),
    "greedyhash": {"loss.cubic_weight": [0.01, 0.1, 1.0]},
    "bihalf": {"loss.bihalf_gamma": [1.0, 3.0, 6.0, 12.0]},
}


def _trials(method: str, n: int, seed: int = 0):
  """``n`` distinct override dicts from the method's grid (seeded random search)."""
  grid = dict(SHARED_GRID, **OWN_GRID[method])
  rng = np.random.default_rng([seed, sum(map(ord, method))])
  out, seen = [], set()
  while len(out) < n and len(seen) < np.prod([len(v) for v in grid.values()]):
    pick = {k: v[rng.integers(len(v))] for k, v in grid.items()}
    key = json.dumps(pick, sort_keys=True)
    if key not in seen:
      seen.add(key)
      out.append(pick)
  return out


def _code_version():
  from nsh_jax.files import code_version
  v = code_version()
  if not v["commit"] or v["dirty"]:
    sys.exit("run from a clean git checkout: every row must record the commit it measured")
  return v


def _flags(overrides: dict):
  return [f"--config.{k}={v}" for k, v in sorted(overrides.items())]


def run(args, method, overrides: dict, seed: int, version):
  """metrics.json of one training run (reused only if config and commit match)."""
  seeded = dict(overrides, **{"seed": seed, "dataset.split_seed": seed})
  if args.val_per_class:
    seeded["dataset.val_queries_per_class"] = args.val_per_class
  flags = [f"--config={args.config}"] + METHODS[method] + RUN_FLAGS + _flags(seeded)
  digest = hashlib.sha256(json.dumps([flags, version["commit"]]).encode()).hexdigest()[:12]
  wd = os.path.join(args.workdir, f"{method}-{digest}")
  path = os.path.join(wd, "metrics.json")
  if os.path.exists(path):
    m = json.load(open(path))
    if m.get("code_version", {}).get("commit") == version["commit"] and not m["code_version"][
        "dirty"] and os.path.exists(os.path.join(wd, "quantize.json")):
      return m, json.load(open(os.path.join(wd, "quantize.json")))
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={wd}"] + flags
  t = time.time()
  for extra in ([], ["--mode=quantize"]):
    res = subprocess.run(cmd + extra, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
      sys.exit(f"{method} {seeded} failed:\n{res.stderr[-3000:]}")
  print(f"  {method} seed {seed} {overrides}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
  return json.load(open(path)), json.load(open(os.path.join(wd, "quantize.json")))


def _val_score(m):
  return float(np.mean([m["validation"][str(b)]["map"] for b in BITS]))


def _cell(values):
  v = np.asarray(values, float)
  return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


DEPTHS = ("100", "1000", "5000", "all")
REPORTED = {  # the NSH paper's Table 1, CIFAR-10 mAP@1000 (VGG-16, official pixels)
    "ITQ": (.305, .325, .349), "GreedyHash": (.448, .473, .501), "BiHalf": (.561, .576, .595),
    "CIBHash": (.590, .622, .641), "NSH": (.706, .733, .756)}


def _profile(r):
  """``{depth: mAP, 'p_at_h2': ...}`` of one length's report."""
  return dict({d: r["map_at"][d] for d in DEPTHS}, p_at_h2=r["p_at_h2"])


def load_config(path: str):
  """The config of a config file (``configs/cifar.py``, or ``configs/cifar.py:lite2`` for a
  variant), as ``main.py --config=`` reads it."""
  import importlib.util
  path, _, variant = path.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant) if variant else mod.get_config()


def posthoc(args, seeds):
  """ITQ / H2Q / LSH on each seed's clean frozen features (its own split):
  ``(mAP@1000 rows, depth-profile rows)``."""
  from nsh_jax import feature_cache, householder, input_pipeline, metrics, train
  rows = {f"{n} on features": [] for n in ("itq", "h2q", "lsh")}
  profiles = {name: [] for name in rows}
  for s in seeds:
    c = load_config(args.config)
    c.seed, c.dataset.split_seed = s, s
    splits = input_pipeline.load(c)
    variables, digest = train.backbone_variables(c)
    fs = feature_cache.load_or_extract(c, splits, variables, digest, log=lambda *a: None)
    for n in ("itq", "h2q", "lsh"):
      by_bits, prof = {}, {}
      for b in BITS:
        q = householder.fit(n, fs.train, bits=b, seed=s)
        qc, dc = (householder.apply(q, x) for x in (fs.query, fs.database))
        ql, dl = splits.query_labels, splits.db_labels
        prof[b] = {d: metrics.mean_average_precision(qc, dc, ql, dl, None if d == "all" else int(d))
                   for d in DEPTHS}
        prof[b]["p_at_h2"] = metrics.precision_within_radius(qc, dc, ql, dl, 2)
        by_bits[b] = prof[b]["1000"]
      rows[f"{n} on features"].append(by_bits)
      profiles[f"{n} on features"].append(prof)
  return rows, profiles


def report(args, version, rows, profiles, selection, done: bool) -> str:
  """The markdown report of the rows so far."""
  lines = [f"mAP@1000 on the test queries, seeds {args.seeds} (mean ± sample std, ddof = 1), "
           f"code {version['commit'][:10]}; `python benchmarks/pretrained_table.py "
           f"{' '.join(sys.argv[1:])}`" + ("" if done else " -- **in progress**"), "",
           "| method | " + " | ".join(f"{b} bits" for b in BITS) + " |", "|---|" + "---|" * 3]
  for name, per_seed in rows.items():
    lines.append(f"| {name} | " + " | ".join(_cell([r[b] for r in per_seed]) for b in BITS) + " |")
  for name, v in REPORTED.items():
    lines.append(f"| *reported (VGG-16, official pixels)*: {name} | "
                 + " | ".join(f"{x:.3f}" for x in v) + " |")
  if "nsh" in rows:
    lines += ["", "Paired per-seed differences (NSH - other), per length:"]
    for name in [n for n in rows if n not in ("nsh",) and "ITQ on its layer" not in n]:
      diffs = {b: [a[b] - c[b] for a, c in zip(rows["nsh"], rows[name])] for b in BITS}
      lines.append(f"- vs {name}: " + "; ".join(
          f"{b} bits " + " ".join(f"{d:+.4f}" for d in diffs[b]) for b in BITS))
  lines += ["", "Depth profile (test queries, mean over seeds): mAP@100 / @1000 / @5000 / over "
            "the whole database, and P@H<=2 (sign codes for trained rows)", "",
            "| method | bits | @100 | @1000 | @5000 | all | P@H<=2 |", "|---|---|---|---|---|---|---|"]
  for name, per_seed in profiles.items():
    for b in BITS:
      vals = [np.mean([p[b][k] for p in per_seed]) for k in DEPTHS + ("p_at_h2",)]
      lines.append(f"| {name} | {b} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
  lines += ["", f"Selection (validation mAP, mean over lengths, seed {args.seeds[0]}):"] + selection
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar.py")
  p.add_argument("--workdir", default="runs/paper_table")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--trials", type=int, default=4, help="settings tried per method (equal budget)")
  p.add_argument("--val-per-class", type=int, default=0,
                 help="validation queries per class (0: the config's; it must have some)")
  p.add_argument("--only", nargs="*", help="run only these methods")
  p.add_argument("--out", help="also write the report (markdown) here, after every method")
  args = p.parse_args()
  os.chdir(ROOT)
  version = _code_version()
  methods = [m for m in METHODS if not args.only or m in args.only]
  selection, rows, profiles = [], {}, {}

  def write(done):
    text = report(args, version, rows, profiles, selection, done)
    if args.out:
      with open(args.out, "w") as f:
        f.write(text + "\n")
    return text

  for method in methods:
    scored = []
    for trial in _trials(method, args.trials):
      m, _ = run(args, method, trial, args.seeds[0], version)
      if "validation" not in m:
        sys.exit("the config has no validation queries: give --val-per-class")
      scored.append((_val_score(m), trial))
    best = max(scored, key=lambda t: t[0])
    selection.append(f"- {method}: " + "; ".join(f"{json.dumps(t)} val {v:.4f}" for v, t in scored)
                     + f" -> kept {json.dumps(best[1])}")
    runs = [run(args, method, best[1], s, version) for s in args.seeds]
    rows[method] = [{b: m["by_bits"][str(b)]["map"] for b in BITS} for m, _ in runs]
    rows[f"{method} + ITQ on its layer"] = [{b: q[str(b)]["itq"] for b in BITS} for _, q in runs]
    profiles[method] = [{b: _profile(m["by_bits"][str(b)]) for b in BITS} for m, _ in runs]
    write(done=False)
  extra_rows, extra_profiles = posthoc(args, args.seeds)
  rows.update(extra_rows)
  profiles.update(extra_profiles)
  print(write(done=True))


if __name__ == "__main__":
  main()
