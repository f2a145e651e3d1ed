"""Learning curves of finished runs, side by side: mAP per length at every evaluation
(``train.eval_every``), from each run's ``metrics.json`` ``curve``.

  python benchmarks/learning_curve.py RUN_DIR [RUN_DIR ...] [--split validation|test]

One markdown table: a row per (run, step), a column per code length, and the
run's code version.  Choices (how long to train) read the validation rows; the test rows
are for the final table only.
"""

import argparse
import json
import os


def rows(workdir: str, split: str) -> tuple:
  """``([(step, {bits: mAP})] in step order, the run's metrics.json)`` of one run."""
  m = json.load(open(os.path.join(workdir, "metrics.json")))
  key = "validation" if split == "validation" else "map"
  return [(p["step"], {int(b): v for b, v in p.get(key, {}).items()})
          for p in sorted(m.get("curve", []), key=lambda p: p["step"])], m


def main():
  p = argparse.ArgumentParser()
  p.add_argument("runs", nargs="+")
  p.add_argument("--split", choices=("validation", "test"), default="validation")
  args = p.parse_args()
  table, lengths = [], set()
  for wd in args.runs:
    curve, m = rows(wd, args.split)
    version = (m.get("code_version", {}).get("commit") or "?")[:7]
    for step, maps in curve:
      lengths |= set(maps)
      table.append((os.path.basename(os.path.normpath(wd)), step, maps, version))
  lengths = sorted(lengths)
  print(f"mAP@top_k on the {args.split} queries\n")
  print("| run | step | " + " | ".join(f"{b} bits" for b in lengths) +
        " | commit |")
  print("|---|---|" + "---|" * len(lengths) + "---|")
  for name, step, maps, version in table:
    print(f"| {name} | {step} | " + " | ".join(
        f"{maps[b]:.4f}" if b in maps else "-" for b in lengths) + f" | {version} |")


if __name__ == "__main__":
  main()
