"""Retrieval quality on real images: NSH vs the baselines, same data, same encoder.

Data: the shared CIFAR-10 prefix (``npz:../shared/data/cifar10_prefix.npz``):
1,017 test images are the queries, the 5,085 training images are both the
database and the training set; mAP@1000 and P@H<=2.

Methods
  nsh          NSH as configured in configs/cifar_prefix.py (SortedNCE + the
               instance terms found in docs/training.md)
  contrastive  the no-sort baseline: NT-Xent between the two views' straight-
               through sign codes (CIBHash-style), same encoder and pipeline
  itq, lsh     on raw pixels (no training)

Each learned run trains one small-CNN head that emits 16/32/64-bit prefix codes
(``model.bit_list``, plain sum of the per-length losses, the same for every
method), so one run gives all three lengths.  ``--seeds`` runs per method; the
table gives mean +- std over seeds.  Ablations (NSH, one seed): SortedNCE off
(the recipe's instance terms alone -- what sorting adds on top of them),
num_positives, temperature, sort temperature, sorter.

  python benchmarks/quality.py --workdir runs/quality [--steps 300] [--seeds 0 1 2]
         [--out docs/quality.md] [--no-ablations]

--out replaces only the text between the file's ``<!-- benchmarks/quality.py: ... -->``
markers (the whole file if it has none), so the prose around the table stays.

Finished runs in --workdir are reused; delete it to measure again.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np

BITS = (16, 32, 64)
DATASET = "npz:../shared/data/cifar10_prefix.npz"


def learned_run(workdir, overrides, steps, seed):
  path = os.path.join(workdir, "metrics.json")
  if not os.path.exists(path):
    bit_list = "(" + ",".join(str(b) for b in BITS) + ")"
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/cifar_prefix.py",
           f"--workdir={workdir}", f"--config.train.steps={steps}", f"--config.seed={seed}",
           f"--config.model.bit_list={bit_list}",
           f"--config.train.checkpoint_every={steps}"] + overrides
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    with open(os.path.join(workdir, "wall.json"), "w") as f:
      json.dump({"wall_seconds": time.perf_counter() - t}, f)
  res = json.load(open(path))
  collapsed = any(h["bit_balance"] > 0.98 for h in res["history"][1:])
  return {"map": {int(b): r["map"] for b, r in res["by_bits"].items()},
          "p_h2": {int(b): r["p_at_h2"] for b, r in res["by_bits"].items()},
          "train_s": res["train_seconds"], "collapsed": collapsed,
          "loss_first": res["history"][0]["loss"], "loss_last": res["history"][-1]["loss"]}


def pixel_baseline(name, seed):
  from nsh_jax import householder, input_pipeline, metrics
  from configs import cifar_prefix
  c = cifar_prefix.get_config()
  os.chdir(ROOT)
  s = input_pipeline.load(c)
  flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0
  train, q, db = flat(s.train_images), flat(s.query_images), flat(s.db_images)
  out = {"map": {}, "p_h2": {}, "train_s": 0.0, "collapsed": False}
  for b in BITS:
    t = time.perf_counter()
    quant = householder.fit(name, train, bits=b, seed=seed)
    out["train_s"] += time.perf_counter() - t
    r = metrics.evaluate_codes(householder.apply(quant, q), householder.apply(quant, db),
                               s.query_labels, s.db_labels, 1000)
    out["map"][b], out["p_h2"][b] = r["map"], r["p_at_h2"]
  return out


def fmt(values):
  v = np.asarray(values, np.float64)
  return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="runs/quality")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--out", default=None, help="also write the Markdown here")
  ap.add_argument("--no-ablations", action="store_true")
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  methods = {"nsh": ["--config.loss.name=nsh"],
             "contrastive": ["--config.loss.name=contrastive"]}
  lines = [f"{platform.machine()}, {os.cpu_count()} CPU cores; {DATASET} (1,017 queries, "
           f"5,085 database = training images), mAP@1000; small CNN, {args.steps} steps of "
           f"batch 128 per run, seeds {args.seeds}; training wall time per run "
           f"(all three lengths).", "",
           "| method | " + " | ".join(f"mAP@1000 {b}" for b in BITS)
           + " | P@H≤2 64 | train (s) | collapsed |",
           "|---|" + "---|" * (len(BITS) + 3)]
  results = {}
  for name, overrides in methods.items():
    runs = [learned_run(os.path.join(args.workdir, f"{name}_seed{s}"), overrides, args.steps, s)
            for s in args.seeds]
    results[name] = runs
    ok = [r for r in runs if "error" not in r]
    if not ok:
      lines.append(f"| {name} | failed: {runs[0]['error']} |")
      continue
    lines.append(f"| {name} | " + " | ".join(fmt([r['map'][b] for r in ok]) for b in BITS)
                 + f" | {fmt([r['p_h2'][64] for r in ok])} | "
                 f"{np.mean([r['train_s'] for r in ok]):.0f} | "
                 f"{sum(r['collapsed'] for r in ok)}/{len(ok)} |")
    print(lines[-1], flush=True)
  for name in ("itq", "lsh"):
    runs = [pixel_baseline(name, s) for s in args.seeds]
    results[name] = runs
    lines.append(f"| {name.upper()} on pixels | "
                 + " | ".join(fmt([r['map'][b] for r in runs]) for b in BITS)
                 + f" | {fmt([r['p_h2'][64] for r in runs])} | "
                 f"{np.mean([r['train_s'] for r in runs]):.1f} | - |")
    print(lines[-1], flush=True)

  if not args.no_ablations:
    seed = args.seeds[0]
    ablations = [("no SortedNCE (instance terms only: what sorting adds)",
                  ["--config.loss.sorted_weight=0.0"]),
                 ("num_positives m=1", ["--config.loss.num_positives=1"]),
                 ("num_positives m=4", ["--config.loss.num_positives=4"]),
                 ("temperature 0.3", ["--config.loss.temperature=0.3"]),
                 ("temperature 0.05", ["--config.loss.temperature=0.05"]),
                 ("sort temperature 4 bits", ["--config.loss.sort_temperature=4.0"]),
                 ("ott-jax sorter", ["--config.loss.sorter=ott"])]
    lines += ["", f"Ablations of NSH (seed {seed}; each row changes one setting of the nsh row):",
              "", "| change | " + " | ".join(f"mAP@1000 {b}" for b in BITS) + " | train (s) |",
              "|---|" + "---|" * (len(BITS) + 1)]
    base = results["nsh"][args.seeds.index(seed)]
    if "error" not in base:
      lines.append("| none (nsh row, this seed) | "
                   + " | ".join(f"{base['map'][b]:.4f}" for b in BITS)
                   + f" | {base['train_s']:.0f} |")
    for label, overrides in ablations:
      tag = label.split(" (")[0].replace(" ", "_").replace("=", "").replace(".", "p")
      r = learned_run(os.path.join(args.workdir, f"ablation_{tag}_seed{seed}"),
                      methods["nsh"] + overrides, args.steps, seed)
      if "error" in r:
        lines.append(f"| {label} | failed: {r['error']} |")
      else:
        lines.append(f"| {label} | " + " | ".join(f"{r['map'][b]:.4f}" for b in BITS)
                     + f" | {r['train_s']:.0f} |")
      print(lines[-1], flush=True)
  text = "\n".join(lines)
  print("\n" + text)
  if args.out:
    write_block(args.out, text)


BEGIN, END = "<!-- benchmarks/quality.py: begin -->", "<!-- benchmarks/quality.py: end -->"


def write_block(path, text):
  """Writes ``text`` between the BEGIN/END markers of ``path``, keeping the prose around them
  (a file without the markers is replaced)."""
  old = open(path).read() if os.path.exists(path) else ""
  head, sep, rest = old.partition(BEGIN)
  head, tail = (head, rest.partition(END)[2]) if sep else ("", "\n")
  with open(path, "w") as f:
    f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
  main()
