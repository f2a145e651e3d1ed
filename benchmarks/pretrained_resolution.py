"""Which input resolution for the frozen EfficientNet-Lite0: extraction time vs ITQ/LSH quality.

  python benchmarks/pretrained_resolution.py --sizes 112 160 224

For each size: extracts the clean features of the CIFAR prefix (5,085 train/database +
1,017 query images) through the feature cache (cold: a fresh cache folder per run), and
reports images/s and ITQ / LSH mAP@1000 at 16/32/64 bits on them, as main.py's baselines
compute them.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from nsh_jax import malloc, xla_cpu  # noqa: E402

malloc.tune()
xla_cpu.apply_defaults()

from configs import cifar_prefix_pretrained  # noqa: E402
from nsh_jax import evaluation, feature_cache, input_pipeline, train  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", type=int, nargs="+", default=[112, 160, 224])
  args = p.parse_args()
  print("| px | clean images/s | itq 16 / 32 / 64 | lsh 16 / 32 / 64 |")
  print("|---|---|---|---|")
  for size in args.sizes:
    c = cifar_prefix_pretrained.get_config()
    c.dataset.image_size, c.features.views = size, 0
    c.features.cache_dir = tempfile.mkdtemp(prefix="nsh_res_")
    splits = input_pipeline.load(c)
    variables, digest = train.backbone_variables(c)
    t = time.time()
    fs = feature_cache.load_or_extract(c, splits, variables, digest, log=lambda *a: None)
    rate = (fs.train.shape[0] + fs.query.shape[0]) / (time.time() - t)
    res = evaluation.baselines(c, splits, (fs.train, fs.query, fs.database), log=lambda *a: None)
    row = lambda name: " / ".join(f"{res[name][b]['map']:.3f}" for b in (16, 32, 64))
    print(f"| {size} | {rate:.0f} | {row('itq-features')} | {row('lsh-features')} |", flush=True)


if __name__ == "__main__":
  main()
