"""Quality vs batch size for NSH and its no-sort control on frozen features (issue #20).

  NSH_JAX_CACHE=runs/feature_cache python benchmarks/batch_curve.py --workdir runs/batch_curve \
      --batches 256 512 1024 2048 --out docs/batch_curve.md

configs/cifar_prefix_pretrained.py (frozen EfficientNet-Lite0 features from the shared cache)
at a fixed budget of ``--epochs`` passes over the 5,085 training images (steps = epochs x
5,085 / batch, warm-up 10% capped at the config's), Adam's learning rate unchanged, with
``train.diagnostics`` on: the table also gives SortedNCE's mining precision on other images
(expected label agreement of the soft top-m mass of view-1 anchors on the batch's view-2
candidates other than the anchor's own view, mean of the last three logged steps) and the hash head's gradient norm from the sorter vs the rest.
Every row is main.py, one process, sequentially (benchmarks/pretrained_table.run_method),
with ``NSH_JAX_KEEP_MALLOC=1`` from batch 2048 on (nsh_jax/malloc.py: the tuned heap
fragments at that size; the allocator changes memory, not numbers).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrained_table import BITS, run_method  # noqa: E402

TRAIN_IMAGES = 5085
METHODS = {"nsh": [], "no-sort": ["--config.loss.sorted_weight=0"]}


def tail_mean(history, key, last=3):
  return float(np.mean([h[key] for h in history[-last:]]))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/batch_curve")
  p.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048])
  p.add_argument("--epochs", type=int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--diagnostics-max-batch", type=int, default=2048,
                 help="diagnostics off above this batch: at 4096 the step's compiled buffers "
                      "grow from 15.9 to 21.5 GiB with them (docs/pretrained.md)")
  p.add_argument("--out")
  args = p.parse_args()
  lines = ["| batch | steps | NSH 16 / 32 / 64 | no-sort 16 / 32 / 64 | NSH − no-sort | "
           "mining, others, 16 / 64 bits (chance) | hash grad sorted / rest |",
           "|---|---|---|---|---|---|---|"]
  for batch in args.batches:
    steps = max(1, round(args.epochs * TRAIN_IMAGES / batch))
    diagnose = batch <= args.diagnostics_max_batch
    common = [f"--config.train.batch_size={batch}", f"--config.train.diagnostics={diagnose}",
              f"--config.train.warmup_steps={min(50, steps // 10)}",
              f"--config.train.log_every={max(1, steps // 10)}",
              f"--config.train.checkpoint_every={steps}"]
    if batch >= 2048:
      os.environ["NSH_JAX_KEEP_MALLOC"] = "1"  # inherited by run_method's main.py
    res = {name: run_method(args.workdir, f"{name}_b{batch}", common + extra, args.seed, steps)
           for name, extra in METHODS.items()}
    (nsh, m), (ctrl, _) = res["nsh"], res["no-sort"]
    h = m["history"]
    fmt = lambda r: " / ".join(f"{r[b]:.4f}" for b in BITS)
    diag = ("n/a (off) | n/a (off)" if not diagnose else
            f"{tail_mean(h, 'mining_others_16bit'):.3f} / {tail_mean(h, 'mining_others_64bit'):.3f} "
            f"({tail_mean(h, 'mining_chance'):.3f}) | "
            f"{tail_mean(h, 'grad_hash_sorted'):.3g} / {tail_mean(h, 'grad_hash_rest'):.3g}")
    lines.append(
        f"| {batch} | {steps} | {fmt(nsh)} | {fmt(ctrl)} | "
        f"{' / '.join(f'{nsh[b] - ctrl[b]:+.3f}' for b in BITS)} | {diag} |")
    print(lines[-1], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"<!-- NSH_JAX_CACHE=runs/feature_cache python benchmarks/batch_curve.py "
              f"{' '.join(sys.argv[1:])} -->\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
