"""SortedNCE's diagnostics of finished runs (``--config.train.diagnostics=True``), one line each.

  python benchmarks/diagnostics_summary.py runs/diag_nsh runs/diag_nosort [--last 3]

Per run, the mean over its last ``--last`` logged steps of: the mining precision per length
(label agreement of SortedNCE's soft top-m), the same on other images (the anchor's own other
view left out), the chance level (the batch's same-class fraction), and the hash head's
gradient norm from SortedNCE vs the rest; then the run's mAP@1000 on the test and validation
queries.  Reads ``metrics.json`` only.
"""

import argparse
import json
import os

import numpy as np


def summary(workdir: str, last: int) -> str:
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: {path} does not exist (not a finished run?)")
  m = json.load(open(path))
  hist = [h for h in m["history"] if "mining_chance" in h][-last:]
  if not hist:
    raise SystemExit(f"error: {workdir} logged no diagnostics (train.diagnostics=False?)")
  mean = lambda k: float(np.mean([h[k] for h in hist]))
  bits = sorted(m["by_bits"], key=int)
  out = [f"{workdir} (steps {[h['step'] for h in hist]})",
         "  mining " + " / ".join(f"{mean(f'mining_{b}bit'):.3f}" for b in bits)
         + " | others " + " / ".join(f"{mean(f'mining_others_{b}bit'):.3f}" for b in bits)
         + f" | chance {mean('mining_chance'):.3f}",
         f"  hash grad sorted / rest {mean('grad_hash_sorted'):.3g} / {mean('grad_hash_rest'):.3g}",
         "  mAP@1000 test " + " / ".join(f"{m['by_bits'][b]['map']:.4f}" for b in bits)]
  if "validation" in m:
    out[-1] += " | val " + " / ".join(f"{m['validation'][b]['map']:.4f}" for b in bits)
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--last", type=int, default=3, help="logged steps averaged")
  args = p.parse_args()
  for w in args.workdirs:
    print(summary(w, args.last))


if __name__ == "__main__":
  main()
