"""The from-scratch first-run recipe (configs/default.py), chosen to transfer across datasets.

  python benchmarks/first_run.py --workdir runs/first_run --out runs/first_run.md

1. **Selection, on validation queries only**, on three small datasets of different kinds: the
   bundled handwritten digits (``configs/default.py``), the CIFAR-10 prefix (real photos,
   ``:natural``), Corel-5k at 32 px (real photos, multi-label, ``:natural``).  Each candidate
   recipe (``RECIPES``: overrides of configs/default.py, the training length in epochs) is
   trained with seed 0 on each; kept: the recipe whose smallest margin over ITQ on pixels (its
   validation mAP@1000 minus ITQ's, over datasets and lengths) is largest.
2. **The check**, on a dataset that took no part in the choice: digits printed in the 22
   TrueType fonts matplotlib ships (``printed_digits``: 1,800 images, 10 classes, random size,
   rotation and offset), the ``digits`` preset.
3. **The table**, test queries: the kept recipe on all four datasets, seeds ``--seeds`` (each its
   own query split, validation split and views), mean +- sample std, beside ITQ and LSH on the
   pixels of the same splits, and the paired per-seed differences from ITQ.
Runs go through ``benchmarks/runs.py`` (reused only at the same clean commit).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402

SHARED = os.path.join(runs.ROOT, "..", "shared", "data")
BITS = (16, 32, 64)
DATASETS = {  # name -> config flags (the selection's three, then the held-out one)
    "digits": ["--config=configs/default.py"],
    "cifar10-prefix": ["--config=configs/default.py:natural",
                       f"--config.dataset.name=npz:{os.path.join(SHARED, 'cifar10_prefix.npz')}"],
    "corel5k-32px": ["--config=configs/default.py:natural",
                     f"--config.dataset.name=lists:{os.path.join(SHARED, 'corel5k.tar.xz')}",
                     "--config.dataset.image_size=32"],
}
HELD_OUT = "printed-digits"
RECIPES = {  # name -> overrides of configs/default.py
    "900 steps": {"train.steps": 900, "train.epochs": 0.0},
    "20 epochs": {"train.epochs": 20.0},
    "40 epochs (the default)": {},
    "40 epochs, lr 3e-3": {"train.epochs": 40.0, "train.learning_rate": 3e-3},
}
FONTS_LEFT_OUT = ("LastResortHE-Regular.ttf", "cmsy10.ttf")  # no digit glyphs


def printed_digits(path: str, per_class: int = 180, queries: int = 20, seed: int = 0) -> str:
  """An .npz of digits 0-9 printed in matplotlib's fonts (white on black, 32 x 32 RGB): each
  image a random font, size 14-28 px, rotation +-12 degrees and offset +-3 px."""
  if os.path.exists(path):
    return path
  import matplotlib
  from PIL import Image, ImageDraw, ImageFont
  folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
  fonts = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
           if f.endswith(".ttf") and f not in FONTS_LEFT_OUT]
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for digit in range(10):
    while labels.count(digit) < per_class:
      font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(14, 29)))
      im = Image.new("L", (32, 32), 0)
      ImageDraw.Draw(im).text((16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4)), str(digit),
                              fill=255, font=font, anchor="mm")
      ink = np.asarray(im) > 64
      if ink.sum() < 12 or ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any():
        continue  # a glyph a font places off the canvas: drawn again
      im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
      images.append(np.repeat(np.asarray(im)[..., None], 3, axis=-1))
      labels.append(digit)
  images, labels = np.stack(images), np.asarray(labels)
  test = np.concatenate([np.flatnonzero(labels == d)[:queries] for d in range(10)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, train_images=images[train], train_labels=labels[train],
           test_images=images[test], test_labels=labels[test])
  return path


def run(args, dataset, recipe, seed, version):
  flags = DATASETS[dataset] + runs.flags(dict(RECIPES[recipe], **{
      "seed": seed, "dataset.split_seed": seed, "eval.plots": False}))
  m, _ = runs.run(args.workdir, dataset, flags, version)
  return m


def margins(m, validation: bool) -> dict:
  """``{bits: model - ITQ on pixels}`` (validation or test mAP@1000)."""
  if validation:
    return {b: m["validation"][str(b)]["map"] - m["baselines_validation"]["itq-pixels"][str(b)]
            for b in BITS}
  return {b: m["by_bits"][str(b)]["map"] - m["baselines"]["itq-pixels"][str(b)] for b in BITS}


def _cell(values):
  v = np.asarray(values, float)
  return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/first_run")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--out")
  args = p.parse_args()
  os.chdir(runs.ROOT)
  version = runs.code_version()
  fonts = printed_digits(os.path.join(os.path.abspath(args.workdir), "printed_digits.npz"))
  DATASETS[HELD_OUT] = ["--config=configs/default.py", f"--config.dataset.name=npz:{fonts}"]
  lines = [f"code {version['commit'][:10]}; `python benchmarks/first_run.py "
           f"{' '.join(sys.argv[1:])}`", "", "Selection (seed 0, validation queries): "
           "model minus ITQ on pixels, mAP@1000, 16 / 32 / 64 bits", "",
           "| recipe | " + " | ".join(d for d in DATASETS if d != HELD_OUT) + " | smallest |",
           "|---|" + "---|" * len(DATASETS)]
  scored = {}
  for recipe in RECIPES:
    cells, worst = [], 1.0
    for dataset in [d for d in DATASETS if d != HELD_OUT]:
      mg = margins(run(args, dataset, recipe, args.seeds[0], version), validation=True)
      cells.append(" / ".join(f"{mg[b]:+.3f}" for b in BITS))
      worst = min(worst, *mg.values())
    scored[recipe] = worst
    lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {worst:+.4f} |")
  kept = max(scored, key=scored.get)
  lines += ["", f"Kept: **{kept}** ({json.dumps(RECIPES[kept])}).", "",
            f"Test queries, seeds {args.seeds} (mean ± sample std), the kept recipe; "
            f"{HELD_OUT} took no part in the choice:", "",
            "| dataset | row | 16 bits | 32 bits | 64 bits |", "|---|---|---|---|---|"]
  diffs = []
  for dataset in DATASETS:
    ms = [run(args, dataset, kept, s, version) for s in args.seeds]
    rows = {"model": [{b: m["by_bits"][str(b)]["map"] for b in BITS} for m in ms]}
    for base in ("itq-pixels", "lsh-pixels"):
      rows[base] = [{b: m["baselines"][base][str(b)] for b in BITS} for m in ms]
    # The ceiling: the continuous hash layer's own cosine ranking (what its codes compress).
    rows["hash layer, cosine (ceiling)"] = [
        {b: m["ceiling"][f"hash layer {b}"]["map_at"][str(m["top_k"] or "all")] for b in BITS}
        for m in ms]
    if all("memorisation" in m for m in ms):  # the model's codes, training images as queries
      rows["model, training queries"] = [
          {b: m["memorisation"][str(b)]["training"] for b in BITS} for m in ms]
    for name, per_seed in rows.items():
      lines.append(f"| {dataset} | {name} | "
                   + " | ".join(_cell([r[b] for r in per_seed]) for b in BITS) + " |")
    diffs.append(f"- {dataset}: " + "; ".join(f"{b} bits " + " ".join(
        f"{margins(m, False)[b]:+.4f}" for m in ms) for b in BITS))
  lines += ["", "Model minus ITQ on pixels, per seed (test):"] + diffs
  text = "\n".join(lines)
  runs.write_report(text, args.out)
  print(text)


if __name__ == "__main__":
  main()
