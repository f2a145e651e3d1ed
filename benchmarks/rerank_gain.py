"""What asymmetric re-ranking changed, per run, length and depth, read from finished runs.

  python benchmarks/rerank_gain.py [--seed-runs] runs/rerank_table [runs/corel_table ...]

Every run under the given folders whose ``metrics.json`` holds re-ranked numbers (``eval.rerank``)
gives one line per length: its method (the run folder's name up to the settings digest), seed,
commit, and at each depth mAP with Hamming ranking -> re-ranked (the difference).  Then, per
folder and method, the number of (seed, length) pairs where re-ranking raised mAP at each depth.
``--seed-runs``: only the runs ``benchmarks/pretrained_table.py`` trains for its table (those with
the ceiling rows), not its selection trials.  The runs
record their own config and commit, so this reads results; it computes none.
"""

import collections
import glob
import json
import os
import sys


def main(folders, seed_runs=False):
  ups = collections.defaultdict(lambda: collections.Counter())
  for path in sorted(p for f in folders for p in glob.glob(os.path.join(f, "*", "metrics.json"))):
    m = json.load(open(path))
    if seed_runs and not m["config"]["eval"].get("ceiling"):
      continue
    run = os.path.dirname(path)
    name = f"{os.path.basename(os.path.dirname(run))}/{os.path.basename(run).rsplit('-', 1)[0]}"
    for bits, r in sorted(m["by_bits"].items(), key=lambda kv: int(kv[0])):
      if "asymmetric" not in r:
        continue
      cells = []
      for depth, after in r["asymmetric"].items():
        before = r["map_at"][depth]
        cells.append(f"@{depth} {before:.4f} -> {after:.4f} ({after - before:+.4f})")
        ups[name][depth, "up"] += after > before
        ups[name][depth, "all"] += 1
      print(f"{name} seed {m['config']['seed']} {bits} bits "
            f"(code {m['code_version']['commit'][:7]}): " + "; ".join(cells))
  for name, c in ups.items():
    depths = dict.fromkeys(d for d, _ in c)
    print(f"{name}: re-ranking raised mAP in " + ", ".join(
        f"{c[d, 'up']}/{c[d, 'all']} at @{d}" for d in depths) + " (seed, length) pairs")


if __name__ == "__main__":
  argv = sys.argv[1:]
  only_seeds = "--seed-runs" in argv
  folders = [a for a in argv if a != "--seed-runs"]
  if not folders:
    sys.exit("usage: python benchmarks/rerank_gain.py [--seed-runs] RUNS_FOLDER [...]")
  main(folders, only_seeds)
