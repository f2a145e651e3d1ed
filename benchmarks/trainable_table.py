"""The trainable-top table: NSH and its controls with the same trainable part of Lite2, each
selected on validation queries with the same search, then seeds, paired differences, the
ceilings, learning curves, memorisation and cost.

  python benchmarks/trainable_table.py --workdir runs/trainable_table --seeds 0 1 2 \\
      [--lanes 2] [--out runs/trainable_table.md]
  python benchmarks/trainable_table.py --workdir runs/trainable_table --seeds 0 1 --report  # so far
  python benchmarks/trainable_table.py --workdir runs/more --seeds 3 --kept nsh=0.1 nsh-no-sort=1 \
      cibhash=1  # more seeds of a selection made earlier

1. **What trains** (every method alike): ``configs/cifar.py:lite2_top`` with
   ``model.train_blocks=1`` (Lite2's last block and head conv on the cached trunk, frozen
   BatchNorm statistics) and the hash heads, ``train.steps=600``, an evaluation every 200
   steps (the learning curve).
2. **The heads' settings** each method kept in the frozen Lite2 table
   (``benchmarks/kept/cifar_lite2.json``: its learning rate, head and temperatures; the steps
   are the trainable part's, above).
3. **Selection**: the same search for every method, ``train.backbone_lr`` (the backbone's
   learning-rate multiplier) in ``BACKBONE_LR``, seed 0; the higher mean validation mAP over
   the lengths is kept.
4. **Seeds**: the kept setting with seed ``s`` (``config.seed`` and ``dataset.split_seed``:
   its own training subset, queries, validation queries and cached views).

Each run lives in ``WORKDIR/<method>_s<seed>_blr<lr>`` with its log beside it
(``<name>.log``, ``/usr/bin/time -v``'s peak memory at its end); a run whose ``metrics.json``
exists is reused and the report prints every run's commit.  A new seed's cached views are
built first on every core (so that two lanes never build one cache); ``--lanes 2`` then runs
two trainings at a time, each pinned to one core (``taskset``), which gets more steps per
second out of 2 cores than one run using both (BENCHMARKS.md).

The report (markdown, test queries, mean ± sample std over seeds, ddof = 1): each method's
codes, its codes with training images as queries (memorisation), ITQ on its trained backbone's
pooled features, the cosine ceilings of that backbone and of its hash layer, and per seed the
frozen features' ceiling and ITQ on them (the reference rows of the NSH run); paired per-seed
differences NSH - other; the validation learning curves of the kept settings; steps/s and
peak memory of every run; the selection.
"""

import argparse
import concurrent.futures
import json
import os
import queue
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402
# One cell format and one selection score for both tables.
from benchmarks.pretrained_table import _cell, _val_score  # noqa: E402

CONFIG = "configs/cifar.py:lite2_top"
TRAINABLE = {"model.train_blocks": 1, "train.steps": 600, "train.eval_every": 200}
KEPT = "benchmarks/kept/cifar_lite2.json"
METHODS = {  # name -> (short name of its runs, the overrides that make it this method)
    "nsh": ("nsh", {}),
    "nsh-no-sort": ("nosort", {"loss.sorted_weight": 0}),
    "cibhash": ("cib", {"loss.name": "cibhash"}),
}
BACKBONE_LR = (0.1, 1.0)


def overrides(method: str, seed: int, backbone_lr: float) -> dict:
  """Every config override of one run (the method's kept heads, the trainable part, the
  search value and the seed)."""
  kept = {k: v for k, v in json.load(open(os.path.join(runs.ROOT, KEPT)))[method].items()
          if k != "train.steps"}
  return dict(kept, **METHODS[method][1], **TRAINABLE, **{
      "train.backbone_lr": backbone_lr, "seed": seed, "dataset.split_seed": seed})


def name(method: str, seed: int, backbone_lr: float) -> str:
  return f"{METHODS[method][0]}_s{seed}_blr{backbone_lr:g}"


def _train(workdir: str, method: str, seed: int, lr: float, cores: "queue.Queue") -> dict:
  """One run's ``metrics.json`` (trained now on one core from ``cores``, or reused)."""
  wd = os.path.join(workdir, name(method, seed, lr))
  path = os.path.join(wd, "metrics.json")
  if not os.path.exists(path):
    core = cores.get()
    try:
      cmd = [sys.executable, "main.py", f"--config={CONFIG}", f"--workdir={wd}"]
      cmd += runs.flags(overrides(method, seed, lr))
      if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
      if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-v"] + cmd
      print(f"  {name(method, seed, lr)}: {' '.join(cmd)}", file=sys.stderr, flush=True)
      with open(wd + ".log", "w") as log:
        rc = subprocess.run(cmd, cwd=runs.ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
      if rc:
        sys.exit(f"{name(method, seed, lr)} failed (rc {rc}); see {wd}.log")
    finally:
      cores.put(core)
  return json.load(open(path))


def _views(seed: int) -> None:
  """Builds (or finds) seed ``seed``'s cached trunk views in this process, on every core."""
  from nsh_jax import encoder_input, input_pipeline
  c = runs.override(runs.load_config(CONFIG), overrides("nsh", seed, BACKBONE_LR[0]))
  encoder_input.create(c, input_pipeline.load(c), log=lambda *a: None)


def _pool(workdir, jobs, lanes):
  """``{job: metrics}`` of ``jobs`` (``(method, seed, lr)``), ``lanes`` at a time."""
  cores = queue.Queue()
  for core in (range(lanes) if lanes > 1 else [None]):
    cores.put(core)
  with concurrent.futures.ThreadPoolExecutor(max(1, lanes)) as ex:
    futures = {j: ex.submit(_train, workdir, *j, cores) for j in jobs}
    return {j: f.result() for j, f in futures.items()}


def _val(m) -> float:
  """Mean validation mAP over the run's lengths (the selection's score)."""
  return _val_score(m, sorted(int(b) for b in m["validation"]))


def _cost(workdir: str, run: str) -> tuple:
  """``(median steps/s, peak RSS GiB)`` from a run's log (``None`` where it has none)."""
  try:
    text = open(os.path.join(workdir, run + ".log")).read()
  except OSError:
    return None, None
  rates = [float(x) for x in re.findall(r"\| ([0-9.]+) steps/s", text)]
  rss = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)
  return (float(np.median(rates)) if rates else None,
          int(rss[-1]) / 2**20 if rss else None)


def report(args, done: dict, kept: dict, scores: dict, bits, top) -> str:
  seeds = args.seeds
  rows = {}
  for method in METHODS:
    if method not in kept:
      continue
    ms = [done[(method, s, kept[method])] for s in seeds if (method, s, kept[method]) in done]
    if len(ms) < len(seeds):
      continue
    per = lambda f: [{b: f(m, b) for b in bits} for m in ms]  # noqa: E731
    rows[method] = per(lambda m, b: m["by_bits"][str(b)]["map"])
    rows[f"{method}, training queries"] = per(
        lambda m, b: m["memorisation"][str(b)]["training"])
    rows[f"{method}: ITQ on its trained backbone"] = per(
        lambda m, b: m["baselines"]["itq-trained backbone"][str(b)])
    rows[f"{method}: hash layer, cosine"] = per(
        lambda m, b: m["ceiling"][f"hash layer {b}"]["map_at"][top])
    rows[f"{method}: trained backbone, cosine (ceiling)"] = per(
        lambda m, b: m["ceiling"]["trained backbone"]["map_at"][top])
    if method == "nsh":
      rows["frozen features, cosine (ceiling)"] = per(
          lambda m, b: m["ceiling"]["features"]["map_at"][top])
      rows["ITQ on the frozen features"] = per(lambda m, b: m["baselines"]["itq-features"][str(b)])
  lines = [f"mAP@{top} on the test queries, seeds {seeds} (mean ± sample std, ddof = 1); "
           f"`python benchmarks/trainable_table.py {' '.join(sys.argv[1:])}`", "",
           "| row | " + " | ".join(f"{b} bits" for b in bits) + " |",
           "|---|" + "---|" * len(bits)]
  for row, per_seed in rows.items():
    lines.append(f"| {row} | " + " | ".join(_cell([r[b] for r in per_seed]) for b in bits) + " |")
  if "nsh" in rows:
    lines += ["", "Paired per-seed differences (NSH - other), per length:"]
    others = [m for m in METHODS if m != "nsh" and m in rows]
    others += ["frozen features, cosine (ceiling)", "ITQ on the frozen features"]
    others += [f"{m}: ITQ on its trained backbone" for m in METHODS if m in rows]
    others += ["nsh: trained backbone, cosine (ceiling)"]
    for row in others:
      lines.append(f"- vs {row}: " + "; ".join(f"{b} bits " + " ".join(
          f"{a[b] - c[b]:+.4f}" for a, c in zip(rows["nsh"], rows[row])) for b in bits))
  lines += ["", "Learning curves of the kept settings (validation mAP, mean over seeds):", "",
            "| method | step | " + " | ".join(f"{b} bits" for b in bits) + " |",
            "|---|---|" + "---|" * len(bits)]
  for method, lr in kept.items():
    ms = [done[(method, s, lr)] for s in seeds if (method, s, lr) in done]
    steps = sorted({p["step"] for m in ms for p in m.get("curve", [])})
    for step in steps:
      pts = [p for m in ms for p in m["curve"] if p["step"] == step]
      lines.append(f"| {method} | {step} | " + " | ".join(
          f"{np.mean([p['validation'][str(b)] for p in pts]):.4f}" for b in bits) + " |")
  lines += ["", "Runs: validation mAP (mean over lengths), steps/s (median of the log's), peak "
            "RSS (`/usr/bin/time -v`, maximum resident set size), training time with its "
            "evaluations, commit:", "",
            "| run | val | steps/s | peak RSS (GiB) | train (s) | commit |",
            "|---|---|---|---|---|---|"]
  for (method, s, lr), m in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
    rate, rss = _cost(args.workdir, name(method, s, lr))
    lines.append(f"| {name(method, s, lr)} | {_val(m):.4f} | "
                 f"{'-' if rate is None else f'{rate:.2f}'} | "
                 f"{'-' if rss is None else f'{rss:.1f}'} | {m.get('train_seconds', 0):.0f} | "
                 f"{m.get('code_version', {}).get('commit', '?')[:7]} |")
  lines += ["", "Selection (validation mAP, mean over lengths, seed 0):"]
  for method, tried in [(m, t) for m, t in scores.items() if t]:
    lines.append(f"- {method}: " + "; ".join(f"backbone_lr {lr:g} val {v:.4f}" for lr, v in tried)
                 + (f" -> kept {kept[method]:g}" if method in kept else ""))
  if not any(scores.values()):
    lines.append("- made earlier, given here (--kept): " + ", ".join(
        f"{m} backbone_lr {lr:g}" for m, lr in kept.items()))
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/trainable_table")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--lanes", type=int, default=1, help="trainings at a time, one core each")
  p.add_argument("--only", nargs="*", help="run only these methods")
  p.add_argument("--out", help="also write the report (markdown) here")
  p.add_argument("--report", action="store_true",
                 help="train nothing: report the finished runs of --seeds (a table in progress)")
  p.add_argument("--kept", nargs="+", metavar="METHOD=LR",
                 help="skip the selection: each method's backbone_lr kept by an earlier one (its "
                      "record), e.g. nsh=0.1 nsh-no-sort=1 cibhash=1; trains --seeds only")
  p.add_argument("--views", type=int, help=argparse.SUPPRESS)  # internal: build one seed's views
  args = p.parse_args()
  os.chdir(runs.ROOT)
  if args.views is not None:
    return _views(args.views)
  os.makedirs(args.workdir, exist_ok=True)
  methods = [m for m in METHODS if not args.only or m in args.only]
  c = runs.load_config(CONFIG)
  bits = tuple(sorted(int(b) for b in c.model.bit_list))
  top = str(c.eval.top_k or "all")

  given = {}
  for item in args.kept or []:
    method, _, lr = item.partition("=")
    if method not in METHODS or not lr:
      sys.exit(f"--kept {item!r}: want METHOD=LR with METHOD one of {list(METHODS)}")
    given[method] = float(lr)
  methods = [m for m in methods if not given or m in given]

  if args.report:
    jobs = [(m, s, lr) for m in methods for s in args.seeds for lr in BACKBONE_LR]
    done = {j: json.load(open(os.path.join(args.workdir, name(*j), "metrics.json"))) for j in jobs
            if os.path.exists(os.path.join(args.workdir, name(*j), "metrics.json"))}
    scores = {m: [] if given else [(lr, _val(done[(m, args.seeds[0], lr)])) for lr in BACKBONE_LR
                                   if (m, args.seeds[0], lr) in done] for m in methods}
    kept = given or {m: max(t, key=lambda x: x[1])[0] for m, t in scores.items()
                     if len(t) == len(BACKBONE_LR)}
    print(report(args, done, kept, scores, bits, top))
    return

  def views(seed):
    if subprocess.run([sys.executable, __file__, "--views", str(seed)], cwd=runs.ROOT).returncode:
      sys.exit(f"building the cached views of seed {seed} failed")

  first = args.seeds[0]
  if given:  # the selection was made before: every seed listed is a seed of the table
    done, scores, kept, rest = {}, {m: [] for m in methods}, given, args.seeds
  else:
    views(first)
    done = _pool(args.workdir, [(m, first, lr) for m in methods for lr in BACKBONE_LR],
                 args.lanes)
    scores = {m: [(lr, _val(done[(m, first, lr)])) for lr in BACKBONE_LR] for m in methods}
    kept = {m: max(scores[m], key=lambda t: t[1])[0] for m in methods}
    rest = args.seeds[1:]
  for s in rest:
    views(s)
  done.update(_pool(args.workdir, [(m, s, kept[m]) for s in rest for m in methods], args.lanes))
  text = report(args, done, kept, scores, bits, top)
  runs.write_report(text, args.out)
  print(text)


if __name__ == "__main__":
  main()
