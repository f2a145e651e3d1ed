"""Writes tests/reference/efficientnet_lite.npz: the PyTorch reference model's outputs.

Needs PyTorch and the reference model code (test-time only; the library never does):
  pip install torch==2.13.0 && pip install --no-deps efficientnet-lite-pytorch
  python tests/reference/make_efficientnet_lite.py
Inputs: the first 8 test images of ../shared/data/cifar10_prefix.npz, upsampled by
pixel repetition to each variant's native size (exactly reproducible on both sides),
scaled (x - 127) / 128.  Stores ImageNet logits and pooled 1280-d features.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from nsh_jax import efficientnet  # noqa: E402


def inputs(images_u8: np.ndarray, size: int) -> np.ndarray:
  """uint8 [n, 32, 32, 3] -> float32 [n, size, size, 3] by repetition, then (x - 127) / 128."""
  rep = -(-size // images_u8.shape[1])
  x = np.repeat(np.repeat(images_u8, rep, 1), rep, 2)[:, :size, :size]
  return (x.astype(np.float32) - 127.0) / 128.0


def main():
  import torch  # only here: tests import inputs() without PyTorch
  from efficientnet_lite_pytorch import EfficientNet
  torch.set_num_threads(2)
  npz = os.path.join(HERE, "..", "..", "..", "shared", "data", "cifar10_prefix.npz")
  images = np.load(npz)["test_images"][:8]
  out = {}
  for variant, v in efficientnet.VARIANTS.items():
    model = EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                         weights_path=efficientnet.weights_path(variant)).eval()
    x = torch.from_numpy(inputs(images, v.native_size).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      out[f"{variant}_logits"] = model(x).numpy()
      out[f"{variant}_features"] = model.extract_features(x).mean((2, 3)).numpy()
  np.savez_compressed(os.path.join(HERE, "efficientnet_lite.npz"), **out)
  print("wrote", sorted(out))


if __name__ == "__main__":
  main()
