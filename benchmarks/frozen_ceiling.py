"""The frozen backbone's own ceiling at several input resolutions: the resolution lever.

  python benchmarks/frozen_ceiling.py [--config configs/cifar.py] [--sizes 160 260] [--seed 0] \\
      [--out runs/frozen_ceiling.md]

Heads on cached frozen features cannot rank past the features themselves (docs/results/
paper_table.md), so whether a larger input helps the frozen recipe is first a question of its
ceiling: the cosine ranking of the clean pooled features (:func:`evaluation.ceilings`, the
``features`` row of every run), on the validation and test queries of the config's split
(``seed``), at every ``size`` px.  It computes only the clean images (no augmented views),
into the same clean store the run's cache uses, so a later run at that size reuses them.
Choose on the validation column; the test column is for the table.
"""

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402


def ceiling(config_path: str, size: int, seed: int, log=print) -> dict:
  """``{'map_at': {depth: mAP}, 'validation': {depth: mAP}}`` of the clean frozen features at
  ``size`` px."""
  from nsh_jax import evaluation, feature_cache, input_pipeline, models
  from nsh_jax.encoder_input import Features
  from nsh_jax.files import digest_arrays
  c = runs.override(runs.load_config(config_path), {
      "dataset.image_size": size, "seed": seed, "dataset.split_seed": seed})
  splits = input_pipeline.load(c)
  variables = models.pretrained_backbone(c.model.backbone, size)
  f = feature_cache.clean_split_features(c, splits, variables,
                                         digest_arrays(*jax.tree.leaves(variables)), log)
  features = Features(f["train"], f["query"], f["database"])
  return evaluation.ceilings(c, splits, None, features, log)["features"]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar.py")
  p.add_argument("--sizes", type=int, nargs="+", default=[160, 260])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="also write the report (markdown) here")
  args = p.parse_args()
  os.chdir(runs.ROOT)
  commit = runs.code_version()["commit"][:7]
  rows = {s: ceiling(args.config, s, args.seed, log=lambda *a: print(*a, file=sys.stderr))
          for s in args.sizes}
  depths = list(next(iter(rows.values()))["map_at"])
  cols = [("validation", d) for d in depths if all("validation" in r for r in rows.values())]
  cols += [("map_at", d) for d in depths]
  lines = [f"Frozen features' cosine ceiling by input size, `{args.config}`, split seed "
           f"{args.seed}, commit {commit}; "
           f"`python benchmarks/frozen_ceiling.py {' '.join(sys.argv[1:])}`", "",
           "| size (px) | " + " | ".join(
               f"{'validation' if k == 'validation' else 'test'} mAP@{d}" for k, d in cols) + " |",
           "|---|" + "---|" * len(cols)]
  for size, r in rows.items():
    lines.append(f"| {size} | " + " | ".join(f"{r[k][d]:.4f}" for k, d in cols) + " |")
  text = "\n".join(lines)
  runs.write_report(text, args.out)
  print(text)


if __name__ == "__main__":
  main()
