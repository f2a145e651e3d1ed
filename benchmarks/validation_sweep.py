"""What moves NSH's top ranks: one factor at a time around a config, on validation queries only (#27).

  python benchmarks/validation_sweep.py --config configs/cifar.py --workdir runs/sweep --seeds 0 \
      --variants m=1 m=4 m=8 "sort 1 bit (paper)" --out runs/validation_sweep.md
  python benchmarks/validation_sweep.py --config configs/cifar_prefix_pretrained.py \
      --val-per-class 50 --workdir runs/prefix_sweep --seeds 0 1 2 \
      --variants "sort 1 bit (paper)" --out runs/prefix_sweep.md

Starting from the config as it is (``configs/cifar.py``: the setting the paper-protocol table
kept on validation), each variant changes one thing -- the number of sorted positives m, the
SoftSort temperature (the paper's 1 bit against 1/8 of the code length), the weights of the
instance terms, the steps, the number of cached views, the backbone -- and is trained with the same seed(s)
as the unchanged config.  The report reads the **validation** queries only: mAP@100 / @1000 /
@5000 / over the whole database per length (where the config sets ``eval.depths``; else its
mAP@top_k alone), P@100, and each variant's difference from the unchanged config at @100 and
@1000 (per seed, and the mean).  The test queries are not read, so nothing here is a table
number; a variant that wins here is a candidate for the next selection round, where every
control gets the same number of extra trials.

Runs go through ``pretrained_table.run`` (keyed by flags and commit, reused only at the same
clean commit), ``--method`` picks NSH or one of the table's controls, and ``--variants`` a
subset of the sweep.
"""

import argparse
import json
import os
import shlex
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import pretrained_table, runs  # noqa: E402  (the table's runs and its config)
# name -> overrides of the config (one factor each); "config" is the unchanged config.
SWEEP = {
    "config": {},
    "m=1": {"loss.num_positives": 1},
    "m=4": {"loss.num_positives": 4},
    "m=8": {"loss.num_positives": 8},
    "sort 1 bit (paper)": {"loss.sort_temperature_unit": "bit", "loss.sort_temperature": 1.0},
    "sort 1/32 of the length": {"loss.sort_temperature": 1 / 32},
    "sort 1/16 of the length": {"loss.sort_temperature": 1 / 16},
    "sort 1/4 of the length": {"loss.sort_temperature": 0.25},
    "no latent instance term": {"loss.instance_weight": 0.0},
    "no code instance term": {"loss.code_instance_weight": 0.0},
    "instance terms x0.5": {"loss.instance_weight": 0.5, "loss.code_instance_weight": 0.5},
    "instance terms x2": {"loss.instance_weight": 2.0, "loss.code_instance_weight": 2.0},
    "2,000 steps": {"train.steps": 2000},
    # More cached views per training image (a new feature cache: every view is extracted).
    "12 views": {"features.views": 12},
    "24 views": {"features.views": 24},
    # Each offline backbone, the recipe unchanged (a new feature cache); one of them is the
    # config's own (configs/cifar.py: Lite2 since e1cb2dc; "Lite2 backbone" was run when it was Lite0).
    "Lite0 backbone": {"model.backbone": "efficientnet_lite0"},
    "Lite2 backbone": {"model.backbone": "efficientnet_lite2"},
}


def _row(table, name, per_seed, base):
  """Markdown rows (one per length) of a variant: validation depth profile (mean over
  seeds) and its paired difference from the unchanged config at @100 / @1000."""
  def at(m, b, d):  # mAP at depth d; a config without eval.depths has its top_k only
    r = m["validation"][str(b)]
    return r["map_at"][d] if "map_at" in r else (r["map"] if d == str(r["top_k"]) else None)

  out = []
  for b in table.bits:
    cells = []
    for d in table.depths:
      vals = [at(m, b, d) for m in per_seed]
      cells.append("—" if None in vals else f"{np.mean(vals):.4f}")
    p100 = [m["validation"][str(b)]["precision_at_n"]["100"] for m in per_seed]
    cells.append(f"{np.mean(p100):.4f}")
    for d in ("100", "1000"):
      diffs = [None if None in (at(m, b, d), at(c, b, d)) else at(m, b, d) - at(c, b, d)
               for m, c in zip(per_seed, base)]
      cells.append("—" if name == "config" or None in diffs else
                   f"{np.mean(diffs):+.4f}" + (f" ({' '.join(f'{x:+.3f}' for x in diffs)})"
                                               if len(diffs) > 1 else ""))
    out.append(f"| {name} | {b} | " + " | ".join(cells) + " |")
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar.py")
  p.add_argument("--workdir", default="runs/sweep")
  p.add_argument("--method", default="nsh", choices=list(pretrained_table.METHODS))
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--val-per-class", type=int, default=0,
                 help="validation queries per class (0: the config's; it must have some)")
  p.add_argument("--variants", nargs="*",
                 help="a subset of the sweep (the config always runs; none given: the config alone)")
  p.add_argument("--out", help="also write the report (markdown) here, after every variant")
  args = p.parse_args()
  os.chdir(runs.ROOT)
  version = runs.code_version()
  table = pretrained_table.Table(args.config)
  unknown = set(args.variants or ()) - set(SWEEP)
  if unknown:
    sys.exit(f"unknown variants {sorted(unknown)}; the sweep has {list(SWEEP)}")
  names = ["config"] + [n for n in SWEEP if n != "config" and (args.variants is None
                                                                or n in args.variants)]
  results = {}
  for name in names:
    results[name] = [pretrained_table.run(args, args.method, SWEEP[name], s, version,
                                          ceiling=False)[0] for s in args.seeds]
    if "validation" not in results[name][0]:
      sys.exit("the config has no validation queries: give --val-per-class")
    lines = [f"{args.method} on **validation** queries, seeds {args.seeds}, code "
             f"{version['commit'][:10]}; `python benchmarks/validation_sweep.py "
             f"{shlex.join(sys.argv[1:])}`" + ("" if name == names[-1] else " -- **in progress**"),
             "", "| variant | bits | " + " | ".join(f"@{d}" for d in table.depths)
             + " | P@100 | Δ@100 | Δ@1000 |", "|---|---|" + "---|" * (len(table.depths) + 3)]
    for n, per_seed in results.items():
      lines += _row(table, n, per_seed, results["config"])
    lines += ["", "Overrides: " + "; ".join(f"{n}: {json.dumps(SWEEP[n])}" for n in results)]
    text = "\n".join(lines)
    runs.write_report(text, args.out)
  print(text)


if __name__ == "__main__":
  main()
