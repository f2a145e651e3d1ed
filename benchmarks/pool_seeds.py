"""Pools the reports of :mod:`benchmarks.trainable_table` run on disjoint seeds into one.

  python benchmarks/pool_seeds.py REPORT.md [REPORT.md ...] [--out pooled.md]

A table grows seed by seed, sometimes across machines whose run folders are gone; each
report records its seeds, its command and its commits.  This reads those reports (never the
runs) and pools them exactly: a cell ``m ± s`` over ``n`` seeds holds the seeds' sum ``n m``
and sum of squares ``(n - 1) s² + n m²``, so the pooled mean and sample std (ddof = 1) follow
from the reports up to their printed rounding (4 decimals).  A row is pooled over the reports
that have it and says how many seeds that is.  Paired per-seed differences are concatenated in
the reports' order, and learning-curve points are averaged with each report's seed count as
its weight.
"""

import argparse
import collections
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402

_SEEDS = re.compile(r"seeds \[([0-9, ]+)\]")
_CELL = re.compile(r"^\s*(-?[0-9.]+)(?:\s*±\s*([0-9.]+))?\s*$")


def parse(text: str) -> dict:
  """``{'seeds', 'bits', 'rows': {row: [(n, mean, std)]}, 'paired': {row: [[d per seed] per
  length]}, 'curves': {(method, step): [mean]}}`` of one report."""
  seeds = [int(s) for s in _SEEDS.search(text).group(1).split(",")]
  out = {"seeds": seeds, "rows": {}, "paired": {}, "curves": {}, "bits": None}
  table = None
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("| row |"):
      table, out["bits"] = "rows", [c.split()[0] for c in cells[1:]]
    elif line.startswith("| method | step |"):
      table = "curves"
    elif not line.startswith("|"):
      table = None
    if line.startswith("- vs "):
      row, _, rest = line[len("- vs "):].rpartition(": ")
      out["paired"][row] = [[float(d) for d in part.split()[2:]] for part in rest.split("; ")]
    if table is None or line.startswith("|---") or line.startswith(("| row", "| method")):
      continue
    if table == "rows":
      parsed = [_CELL.match(c) for c in cells[1:]]
      out["rows"][cells[0]] = [(len(seeds), float(m.group(1)), float(m.group(2) or 0))
                               for m in parsed]
    else:
      out["curves"][(cells[0], int(cells[1]))] = [float(c) for c in cells[2:]]
  return out


def _pool(cells) -> tuple:
  """``(n, mean, std)`` of cells ``(n_i, mean_i, std_i)`` of disjoint seeds."""
  n = sum(c[0] for c in cells)
  total = sum(c[0] * c[1] for c in cells)
  squares = sum((c[0] - 1) * c[2] ** 2 + c[0] * c[1] ** 2 for c in cells)
  mean = total / n
  return n, mean, math.sqrt(max(squares - n * mean ** 2, 0.0) / (n - 1)) if n > 1 else 0.0


def _disjoint(reports: list, row) -> list:
  """``reports`` (those holding ``row``); exits if two of them share a seed."""
  seeds = [s for r in reports for s in r["seeds"]]
  if len(set(seeds)) < len(seeds):
    sys.exit(f"row {row!r}: the reports that hold it share seeds ({seeds}); pooling needs "
             "disjoint seeds")
  return reports


def pool(reports: list, names: list) -> str:
  seeds = sorted({s for r in reports for s in r["seeds"]})
  bits = next(r["bits"] for r in reports if r["bits"])
  lines = [f"Pooled from {', '.join(names)} (seeds {seeds}; each report's command and commits "
           "are in it); `python benchmarks/pool_seeds.py " + " ".join(sys.argv[1:]) + "`", "",
           "mAP on the test queries, mean ± sample std (ddof = 1) over the seeds each row has:", "",
           "| row | seeds | " + " | ".join(f"{b} bits" for b in bits) + " |",
           "|---|---|" + "---|" * len(bits)]
  rows = list(dict.fromkeys(k for r in reports for k in r["rows"]))
  for row in rows:
    have = _disjoint([r for r in reports if row in r["rows"]], row)
    pooled = [_pool([r["rows"][row][i] for r in have]) for i in range(len(bits))]
    cell = lambda p: f"{p[1]:.4f}" + (f" ± {p[2]:.4f}" if p[0] > 1 else "")  # noqa: E731
    lines.append(f"| {row} | {sum(len(r['seeds']) for r in have)} | "
                 + " | ".join(cell(p) for p in pooled) + " |")
  paired = list(dict.fromkeys(k for r in reports for k in r["paired"]))
  if paired:
    lines += ["", "Paired per-seed differences (NSH - other), per length, one per seed:"]
  for row in paired:
    per, have = [[] for _ in bits], _disjoint([r for r in reports if row in r["paired"]], row)
    for r in have:
      for i, ds in enumerate(r["paired"][row]):
        per[i] += ds
    lines.append(f"- vs {row} (seeds {[s for r in have for s in r['seeds']]}): " + "; ".join(
        f"{b} bits " + " ".join(f"{d:+.4f}" for d in ds) for b, ds in zip(bits, per)))
  curves = collections.defaultdict(list)
  for key in dict.fromkeys(k for r in reports for k in r["curves"]):
    for r in _disjoint([r for r in reports if key in r["curves"]], key[0]):
      curves[key].append((len(r["seeds"]), r["curves"][key]))
  if curves:
    lines += ["", "Learning curves (validation mAP, mean over seeds):", "",
              "| method | step | seeds | " + " | ".join(f"{b} bits" for b in bits) + " |",
              "|---|---|---|" + "---|" * len(bits)]
  for (method, step), parts in curves.items():
    n = sum(p[0] for p in parts)
    means = [sum(p[0] * p[1][i] for p in parts) / n for i in range(len(bits))]
    lines.append(f"| {method} | {step} | {n} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("reports", nargs="+",
                 help="trainable_table.py reports (markdown) of disjoint seeds")
  p.add_argument("--out", help="also write the pooled report (markdown) here")
  args = p.parse_args()
  text = pool([parse(open(f).read()) for f in args.reports], args.reports)
  runs.write_report(text, args.out)
  print(text)


if __name__ == "__main__":
  main()
