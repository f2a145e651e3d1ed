"""sign vs ITQ vs H2Q on the same continuous embeddings, mAP@1000 at 16/32/64 bits.

Stage 1 trains the small CNN on the shared CIFAR-10 prefix with no quantization
penalty (continuous 64-d hash-layer outputs), unless --workdir already holds a
finished run; stage 2 fits each quantizer on the training embeddings (here the
training set is the database) and evaluates query vs database codes.

  python benchmarks/quantizers.py --workdir runs/h2q_prefix [--steps 400]

For 16 and 32 bits, ITQ and H2Q first reduce the 64-d embeddings by PCA; "sign"
takes the first b dimensions.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np

from nsh_jax import householder, metrics


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="runs/h2q_prefix")
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--loss", default="contrastive")
  ap.add_argument("--h2q-epochs", type=int, default=100)
  args = ap.parse_args()
  emb_path = os.path.join(args.workdir, "codes", "embeddings.npz")
  if not os.path.exists(emb_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                    "--config=configs/cifar_prefix.py", f"--workdir={args.workdir}",
                    f"--config.loss.name={args.loss}", "--config.loss.quant_weight=0",
                    "--config.loss.balance_weight=0", f"--config.train.steps={args.steps}",
                    "--config.train.batch_size=64"], cwd=ROOT, check=True)
  e = np.load(emb_path)
  q, db, ql, dl = e["query"], e["database"], e["query_labels"], e["database_labels"]
  print(f"# embeddings from {args.workdir} (stage 1: {args.loss} loss, quant_weight=0); "
        f"{q.shape[0]} queries, {db.shape[0]} database = training images; mAP@1000")
  print("| bits | sign | ITQ | H2Q | H2Q fit (s) |")
  print("|---|---|---|---|---|")
  for bits in (16, 32, 64):
    row = {}
    for name in ("sign", "itq", "h2q"):
      t = time.perf_counter()
      kw = {"epochs": args.h2q_epochs} if name == "h2q" else {}
      quant = householder.fit(name, db, bits=bits, **kw)
      fit_s = time.perf_counter() - t
      row[name] = metrics.mean_average_precision(householder.apply(quant, q),
                                                 householder.apply(quant, db), ql, dl, 1000)
    print(f"| {bits} | {row['sign']:.4f} | {row['itq']:.4f} | {row['h2q']:.4f} | {fit_s:.1f} |",
          flush=True)


if __name__ == "__main__":
  main()
