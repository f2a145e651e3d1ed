"""Decoding an image-folder archive: wall time of ``image_folder.read_split_folder``.

  python benchmarks/image_folder_decode.py [../shared/data/cifar10_jpeg.tar.xz] [--size 160]

Reads the archive in place (xz stream, Pillow decode of each JPEG), as ``dataset.name =
'folder:PATH'`` does at the start of a run; prints images per split, seconds and images/s.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import image_folder  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("path", nargs="?", default=os.path.join(ROOT, "..", "shared", "data",
                                                          "cifar10_jpeg.tar.xz"))
  p.add_argument("--size", type=int, default=160)
  args = p.parse_args()
  t = time.time()
  splits, classes = image_folder.read_split_folder(args.path, args.size)
  dt = time.time() - t
  n = sum(v[0].shape[0] for v in splits.values())
  print(f"{args.path}: {', '.join(f'{k} {v[0].shape}' for k, v in splits.items())}, "
        f"{len(classes)} classes; {dt:.1f} s, {n / dt:.0f} images/s (cold page cache not forced)")


if __name__ == "__main__":
  main()
