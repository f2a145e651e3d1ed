"""Per-seed rows and the ordering check of a finished ``pretrained_table.py`` work dir (#28).

  python benchmarks/table_ordering.py --workdir /work/table/runs/paper_table --commit b063b27 \
      --order greedyhash bihalf cibhash nsh

Reads only finished runs (``metrics.json`` + ``quantize.json``) recorded at ``--commit``, clean.
The setting a method kept is the one it was run with on more than one seed (the table runs
every other trial on the selection seed alone).  For each method and length it prints the
per-seed mAP@1000 (sign codes, and ITQ on its layer); then for each adjacent pair of
``--order`` (A before B, the paper's claim A < B) the paired per-seed differences B - A and
the verdict: **holds** when every paired difference is positive and the mean difference
exceeds the larger of the two sample standard deviations (ddof = 1): "outside the seed
spread".  With ``--trials``, also every run on the selection seed: its setting and its
*validation* depth profile (mAP@100 / @1000 / @5000 / whole database) per length -- the
selection evidence, never the test queries.  Nothing is trained or evaluated here.
"""

import argparse
import collections
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import pretrained_table  # noqa: E402  (its grid, lengths and depths)

BITS = tuple(str(b) for b in pretrained_table.BITS)


def finished_runs(workdir: str, commit: str):
  """``(method, config without seeds, seed, metrics, quantize)`` of each finished run at
  ``commit`` (clean)."""
  for path in glob.glob(os.path.join(workdir, "*", "metrics.json")):
    run = os.path.dirname(path)
    if not os.path.exists(os.path.join(run, "quantize.json")):
      continue
    m = json.load(open(path))
    v = m.get("code_version", {})
    if not v.get("commit", "").startswith(commit) or v.get("dirty"):
      continue
    c = json.loads(json.dumps(m["config"]))
    seed = c.pop("seed")
    c["dataset"].pop("split_seed")
    yield (os.path.basename(run).rsplit("-", 1)[0], c, seed, m,
           json.load(open(os.path.join(run, "quantize.json"))))


def kept_runs(workdir: str, commit: str) -> dict:
  """``{method: {seed: (metrics, quantize)}}`` of each method's kept setting."""
  by_setting = collections.defaultdict(dict)
  for method, c, seed, m, q in finished_runs(workdir, commit):
    by_setting[(method, json.dumps(c, sort_keys=True))][seed] = (m, q)
  kept = {}
  for (method, _), seeds in by_setting.items():
    if len(seeds) > 1:
      if method in kept:
        raise SystemExit(f"error: {method} has two settings run on several seeds")
      kept[method] = dict(sorted(seeds.items()))
  return kept


def _trials(args):
  print(f"validation mAP, every run on seed {args.trials}: @100 / @1000 / @5000 / all")
  rows = sorted(((meth, c, m) for meth, c, s, m, _ in finished_runs(args.workdir, args.commit)
                 if s == args.trials), key=lambda r: (r[0], -np.mean(
                     [r[2]["validation"][b]["map"] for b in BITS])))
  for meth, c, m in rows:
    searched = dict(pretrained_table.SHARED_GRID, **pretrained_table.OWN_GRID[meth])
    print(f"  {meth:12s} " + " ".join(
        f"{k.split('.')[1]}={c[k.split('.')[0]][k.split('.')[1]]:g}" for k in searched))
    for b in BITS:
      at = m["validation"][b]["map_at"]
      print(f"      {b} bits: " + " / ".join(f"{at[d]:.3f}" for d in pretrained_table.DEPTHS))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--commit", required=True)
  p.add_argument("--order", nargs="+", default=["greedyhash", "bihalf", "cibhash", "nsh"])
  p.add_argument("--trials", type=int, metavar="SEED",
                 help="also list every run on this (selection) seed with its validation profile")
  args = p.parse_args()
  if args.trials is not None:
    _trials(args)
  kept = kept_runs(args.workdir, args.commit)
  if not kept:
    raise SystemExit(f"error: no finished multi-seed runs at {args.commit} in {args.workdir}")
  sign = {meth: {b: np.array([m["by_bits"][b]["map"] for m, _ in s.values()]) for b in BITS}
          for meth, s in kept.items()}
  print("mAP@1000, test queries, per seed (sign codes | ITQ on the learned layer)")
  for meth, s in kept.items():
    for b in BITS:
      itq = [q[b]["itq"] for _, q in s.values()]
      print(f"  {meth:12s} {b} bits seeds {list(s)}: "
            + " ".join(f"{x:.4f}" for x in sign[meth][b]) + " | "
            + " ".join(f"{x:.4f}" for x in itq))
  print("ordering (paired per-seed differences B - A; holds: all > 0 and mean > max std)")
  for a, b_ in zip(args.order, args.order[1:]):
    if a not in kept or b_ not in kept:
      print(f"  {a} < {b_}: not measured")
      continue
    if list(kept[a]) != list(kept[b_]):
      raise SystemExit(f"error: {a} and {b_} ran on different seeds")
    for b in BITS:
      d = sign[b_][b] - sign[a][b]
      spread = max(sign[a][b].std(ddof=1), sign[b_][b].std(ddof=1))
      ok = bool((d > 0).all() and d.mean() > spread)
      print(f"  {a} < {b_} at {b} bits: " + " ".join(f"{x:+.4f}" for x in d)
            + f" (mean {d.mean():+.4f}, spread {spread:.4f}): {'holds' if ok else 'does not hold'}")


if __name__ == "__main__":
  main()
