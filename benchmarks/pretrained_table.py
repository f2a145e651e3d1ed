"""The frozen-backbone table under an honest protocol: selection on validation, equal budgets, paired seeds.

  python benchmarks/pretrained_table.py --config configs/cifar.py --workdir runs/lite2_table \
      --trials 4 --seeds 0 1 2 --out runs/lite2_table.md      # Lite2 (the default); :lite0 for Lite0
  python benchmarks/pretrained_table.py --config configs/corel5k.py --workdir runs/corel_table \
      --only nsh nsh-no-sort contrastive cibhash --out runs/corel_table.md

For each trained method (NSH; NSH without SortedNCE; contrastive hashing on sign codes; the
NSH paper's Table 1 baselines CIBHash, GreedyHash, BiHalf as their authors' code computes them):

1. **Selection, on validation queries only.**  ``--trials`` settings per method, drawn by one
   seeded random search from that method's grid (the same dimensions for every method where
   they apply: learning rate, steps, head width, the softmax temperature; plus one of its
   own: SoftSort temperature, KL weight, cubic weight, bi-half gamma), trained with seed 0;
   the setting with the best mean validation mAP over the lengths is kept.  Every method
   gets the same number of trials.
2. **Seeds.**  The kept setting is trained with seeds ``--seeds``: seed ``s`` sets
   ``config.seed``, ``dataset.split_seed`` (its own training subset, queries and validation
   queries) and, through ``features.seed = -1``, its own cached views.
3. **The table**, on the test queries: mean +- sample std (ddof = 1) per length, the paired
   per-seed differences NSH - control, each trained row with sign codes and with ITQ fitted on
   its learned layer (``--mode=quantize``), ITQ / H2Q / LSH on the same seed's frozen
   features, and the ceilings: the frozen features' and each trained row's hash layer's own
   cosine ranking.

Runs go through ``benchmarks/runs.py`` (reused only at the same clean commit), so a table
interrupted (or run in parts, ``--only``) resumes where it stopped; ``--out`` is rewritten
after every method with the rows so far.  Lengths, mAP@k and depths are the config's
(``model.bit_list``, ``eval.top_k``, ``eval.depths``); the ceiling rows come from the seed
runs (the hash layer's cosine ranking) and from each seed's frozen features.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402

METHODS = {  # name -> fixed overrides
    "nsh": [],
    "nsh-no-sort": ["--config.loss.sorted_weight=0"],
    "contrastive": ["--config.loss.name=contrastive"],
    "cibhash": ["--config.loss.name=cibhash"],
    "greedyhash": ["--config.loss.name=greedyhash"],
    "bihalf": ["--config.loss.name=bihalf"],
}
# Every run: no per-run pixel/feature baselines or plots (posthoc() computes the baselines once
# per seed), only the quantizers the table reads; the ceiling in the seed runs only.
RUN_FLAGS = ["--config.eval.baselines=False", "--config.eval.plots=False",
             "--config.eval.quantizers=('sign','itq')"]
SHARED_GRID = {  # dimensions every method is searched over
    "train.learning_rate": [3e-4, 1e-3, 3e-3],
    "train.steps": [500, 1000, 2000],
    "model.head_hidden": [0, 1024],
}
TEMPERATURE = {"loss.temperature": [0.1, 0.2, 0.3, 0.5]}  # NT-Xent / SortedNCE's softmax
# One more dimension per method, its own (the same size of search for each).
OWN_GRID = {
    "nsh": dict(TEMPERATURE, **{"loss.sort_temperature": [1 / 32, 1 / 16, 1 / 8, 1 / 4]}),
    "nsh-no-sort": TEMPERATURE,
    "contrastive": TEMPERATURE,
    "cibhash": dict(TEMPERATURE, **{"loss.kl_weight": [1e-4, 1e-3, 1e-2]}),
    "greedyhash": {"loss.cubic_weight": [0.01, 0.1, 1.0]},
    "bihalf": {"loss.bihalf_gamma": [1.0, 3.0, 6.0, 12.0]},
}


def _trials(method: str, n: int, seed: int = 0):
  """``n`` distinct override dicts from the method's grid (seeded random search)."""
  grid = dict(SHARED_GRID, **OWN_GRID[method])
  rng = np.random.default_rng([seed, sum(map(ord, method))])
  out, seen = [], set()
  while len(out) < n and len(seen) < np.prod([len(v) for v in grid.values()]):
    pick = {k: v[rng.integers(len(v))] for k, v in grid.items()}
    key = json.dumps(pick, sort_keys=True)
    if key not in seen:
      seen.add(key)
      out.append(pick)
  return out


def run(args, method, overrides: dict, seed: int, version, ceiling: bool):
  """``(metrics.json, quantize.json)`` of one training run (:func:`runs.run`)."""
  seeded = dict(overrides, **{"seed": seed, "dataset.split_seed": seed,
                              "eval.ceiling": ceiling})
  if args.val_per_class:
    seeded["dataset.val_queries_per_class"] = args.val_per_class
  flags = [f"--config={args.config}"] + METHODS[method] + RUN_FLAGS + runs.flags(seeded)
  m, extra = runs.run(args.workdir, method, flags, version, modes=("quantize",))
  return m, extra["quantize"]


def _val_score(m, bits):
  return float(np.mean([m["validation"][str(b)]["map"] for b in bits]))


def _cell(values):
  v = np.asarray(values, float)
  return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


# The NSH paper's Table 1 (VGG-16): CIFAR-10 mAP@1000 (official pixels), NUS-WIDE and MS-COCO
# mAP@5000; the multi-label columns are other datasets than Corel-5k.
REPORTED = {
    "cifar10": {"ITQ": (.305, .325, .349), "GreedyHash": (.448, .473, .501),
                "BiHalf": (.561, .576, .595), "CIBHash": (.590, .622, .641),
                "NSH": (.706, .733, .756)},
    "NUS-WIDE": {"ITQ": (.627, .645, .664), "GreedyHash": (.633, .691, .731),
                 "CIBHash": (.790, .807, .815), "NSH": (.758, .811, .824)},
    "MS-COCO": {"ITQ": (.598, .624, .648), "GreedyHash": (.582, .668, .710),
                "CIBHash": (.737, .760, .775), "NSH": (.746, .774, .783)},
}


class Table:
  """The lengths, depths and mAP@k of the config the table measures."""

  def __init__(self, config_path):
    c = runs.load_config(config_path)
    self.bits = tuple(sorted(int(b) for b in c.model.bit_list))
    self.top = str(c.eval.top_k or "all")
    depths = tuple(c.eval.get("depths", ())) + (c.eval.top_k or 0,)
    self.depths = tuple(dict.fromkeys(str(d or "all") for d in depths))
    self.multi_label = c.dataset.name.startswith("lists:")

  def profile(self, r):
    """``{depth: mAP, 'p_at_h2': ...}`` of one length's report."""
    return dict({d: r["map_at"][d] for d in self.depths}, p_at_h2=r["p_at_h2"])


def posthoc(args, table, seeds):
  """Per seed (its own split): ITQ / H2Q / LSH on the clean frozen features and their cosine
  ranking (the ceiling): ``(mAP@k rows, depth-profile rows)``."""
  from nsh_jax import encoder_input, householder, input_pipeline, metrics
  names = ("itq", "h2q", "lsh")
  rows = {f"{n} on features": [] for n in names}
  rows["features, cosine (ceiling)"] = []
  profiles = {name: [] for name in rows}
  for s in seeds:
    c = runs.load_config(args.config)
    c.seed, c.dataset.split_seed = s, s
    inputs = encoder_input.create(c, input_pipeline.load(c), log=lambda *a: None)
    f, splits = inputs.frozen_features(), inputs.splits
    ql, dl = splits.query_labels, splits.db_labels
    at = lambda d: None if d == "all" else int(d)
    for n in names:
      prof = {}
      for b in table.bits:
        q = householder.fit(n, f.train, bits=b, seed=s)
        qc, dc = (householder.apply(q, x) for x in (f.query, f.database))
        prof[b] = {d: metrics.mean_average_precision(qc, dc, ql, dl, at(d)) for d in table.depths}
        prof[b]["p_at_h2"] = metrics.precision_within_radius(qc, dc, ql, dl, 2)
      rows[f"{n} on features"].append({b: prof[b][table.top] for b in table.bits})
      profiles[f"{n} on features"].append(prof)
    cos = metrics.cosine_map(f.query, f.database, ql, dl, [at(d) for d in table.depths])
    prof = {d: cos[at(d)] for d in table.depths}
    rows["features, cosine (ceiling)"].append({b: prof[table.top] for b in table.bits})
    profiles["features, cosine (ceiling)"].append({b: dict(prof, p_at_h2=float("nan"))
                                                   for b in table.bits})
  return rows, profiles


def report(args, table, version, rows, profiles, selection, done: bool) -> str:
  """The markdown report of the rows so far."""
  bits, top = table.bits, table.top
  lines = [f"mAP@{top} on the test queries, seeds {args.seeds} (mean ± sample std, ddof = 1), "
           f"code {version['commit'][:10]}; `python benchmarks/pretrained_table.py "
           f"{' '.join(sys.argv[1:])}`" + ("" if done else " -- **in progress**"), "",
           "| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
           "|---|" + "---|" * len(bits)]
  for name, per_seed in rows.items():
    lines.append(f"| {name} | " + " | ".join(_cell([r[b] for r in per_seed]) for b in bits) + " |")
  for dataset, reported in REPORTED.items():
    if (dataset == "cifar10") == table.multi_label:
      continue
    where = ("VGG-16, official pixels, mAP@1000" if dataset == "cifar10" else
             f"{dataset}, another dataset, VGG-16, mAP@5000")
    for name, v in reported.items():
      lines.append(f"| *reported ({where})*: {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
  if "nsh" in rows:
    lines += ["", "Paired per-seed differences (NSH - other), per length:"]
    for name in [n for n in rows if n != "nsh" and "ITQ on its layer" not in n
                 and "re-ranked" not in n and "training queries" not in n]:
      diffs = {b: [a[b] - c[b] for a, c in zip(rows["nsh"], rows[name])] for b in bits}
      lines.append(f"- vs {name}: " + "; ".join(
          f"{b} bits " + " ".join(f"{d:+.4f}" for d in diffs[b]) for b in bits))
  lines += ["", "Depth profile (test queries, mean over seeds): mAP at each depth and P@H<=2 "
            "(sign codes for trained rows; a cosine ranking has no Hamming radius)", "",
            "| method | bits | " + " | ".join(f"@{d}" for d in table.depths) + " | P@H<=2 |",
            "|---|---|" + "---|" * (len(table.depths) + 1)]
  for name, per_seed in profiles.items():
    for b in bits:
      vals = [np.mean([p[b][k] for p in per_seed]) for k in table.depths + ("p_at_h2",)]
      lines.append(f"| {name} | {b} | " + " | ".join(
          "—" if np.isnan(v) else f"{v:.4f}" for v in vals) + " |")
  ranked = [m for m in rows if f"{m}, re-ranked" in rows]
  if ranked:
    lines += ["", "Re-ranked minus Hamming (each seed's Hamming top-R re-ordered by the query's "
              "real-valued code), per depth, length and seed:"]
    for m in ranked:
      for d in table.depths:
        lines.append(f"- {m}, mAP@{d}: " + "; ".join(f"{b} bits " + " ".join(
            f"{r[b][d] - h[b][d]:+.4f}" for r, h in zip(profiles[f"{m}, re-ranked"], profiles[m]))
            for b in bits))
  lines += ["", f"Selection (validation mAP, mean over lengths, seed {args.seeds[0]}):"] + selection
  return "\n".join(lines)


def _select(args, table, version, method, selection) -> dict:
  """The setting kept on validation: ``--trials`` settings trained on seed ``seeds[0]``, the
  best mean validation mAP over lengths kept; or, with ``--kept``, the one a selection
  recorded there kept."""
  if args.kept:
    kept = json.load(open(args.kept))
    selection.append(f"- {method}: kept {json.dumps(kept[method])} (from {args.kept}: "
                     f"{kept.get('_source', '')})")
    return kept[method]
  scored = []
  for trial in _trials(method, args.trials):
    m, _ = run(args, method, trial, args.seeds[0], version, ceiling=False)
    if "validation" not in m:
      sys.exit("the config has no validation queries: give --val-per-class")
    scored.append((_val_score(m, table.bits), trial))
  best = max(scored, key=lambda t: t[0])
  selection.append(f"- {method}: " + "; ".join(f"{json.dumps(t)} val {v:.4f}" for v, t in scored)
                   + f" -> kept {json.dumps(best[1])}")
  return best[1]


def _method(args, table, version, method, rows, profiles, selection):
  """Selection on validation (:func:`_select`), then the seeds."""
  kept = _select(args, table, version, method, selection)
  done = [run(args, method, kept, s, version, ceiling=True) for s in args.seeds]
  bits = table.bits
  rows[method] = [{b: m["by_bits"][str(b)]["map"] for b in bits} for m, _ in done]
  rows[f"{method} + ITQ on its layer"] = [{b: q[str(b)]["itq"] for b in bits} for _, q in done]
  if "asymmetric" in done[0][0]["by_bits"][str(bits[0])]:
    rows[f"{method}, re-ranked"] = [{b: m["by_bits"][str(b)]["asymmetric"][table.top]
                                     for b in bits} for m, _ in done]
    profiles[f"{method}, re-ranked"] = [
        {b: dict(m["by_bits"][str(b)]["asymmetric"], p_at_h2=float("nan")) for b in bits}
        for m, _ in done]
  rows[f"{method}: hash layer, cosine (ceiling)"] = [
      {b: m["ceiling"][f"hash layer {b}"]["map_at"][table.top] for b in bits} for m, _ in done]
  if all("memorisation" in m for m, _ in done):  # its codes, training images as queries
    rows[f"{method}, training queries"] = [
        {b: m["memorisation"][str(b)]["training"] for b in bits} for m, _ in done]
  profiles[method] = [{b: table.profile(m["by_bits"][str(b)]) for b in bits} for m, _ in done]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar.py")
  p.add_argument("--workdir", default="runs/paper_table")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--trials", type=int, default=4, help="settings tried per method (equal budget)")
  p.add_argument("--val-per-class", type=int, default=0,
                 help="validation queries per class (0: the config's; it must have some)")
  p.add_argument("--only", nargs="*", help="run only these methods")
  p.add_argument("--kept", help="a JSON file {method: overrides} a selection kept (no trials run)")
  p.add_argument("--out", help="also write the report (markdown) here, after every method")
  args = p.parse_args()
  os.chdir(runs.ROOT)
  version = runs.code_version()
  table = Table(args.config)
  methods = [m for m in METHODS if not args.only or m in args.only]
  selection, rows, profiles = [], {}, {}

  def write(done):
    text = report(args, table, version, rows, profiles, selection, done)
    if args.out:
      with open(args.out, "w") as f:
        f.write(text + "\n")
    return text

  for method in methods:
    _method(args, table, version, method, rows, profiles, selection)
    write(done=False)
  extra_rows, extra_profiles = posthoc(args, table, args.seeds)
  rows.update(extra_rows)
  profiles.update(extra_profiles)
  print(write(done=True))


if __name__ == "__main__":
  main()
