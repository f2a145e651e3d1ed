"""Frozen-backbone speed: feature extraction (ours vs the PyTorch reference) and head steps on the cache.

  python benchmarks/feature_extraction.py --sizes 112 160 224 --images 256 --rounds 3

Part 1: images/s of EfficientNet-Lite0 pooled features, ours (JAX, the port in
nsh_jax/efficientnet.py) against the PyTorch reference model (efficientnet-lite-pytorch,
needs torch), the same uint8 images resized bilinearly on each side, batches of 64,
interleaved rounds, best round each.  Also our grouped-convolution depthwise form, to show
why the shifted-slice form is used on CPU.
Part 2: head-training steps/s on cached features (the step main.py runs for
features.views > 0) at batch 256 and 1024: NSH (SortedNCE + quantization) and the no-sort
contrastive objective.
"""

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsh_jax import malloc, xla_cpu  # noqa: E402

malloc.tune()
xla_cpu.apply_defaults()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import cifar_prefix_pretrained  # noqa: E402
from nsh_jax import augment, efficientnet, encoder_input, state as state_lib  # noqa: E402
from nsh_jax import step as step_lib  # noqa: E402
from nsh_jax import torch_checkpoint  # noqa: E402

BATCH = 64


def ours(size, grouped=False):
  variables = efficientnet.convert_state_dict(
      torch_checkpoint.load_state_dict(efficientnet.weights_path("lite0")), "lite0")
  variables["params"].pop("fc")
  model = efficientnet.EfficientNetLite("lite0", grouped_depthwise=grouped)
  fn = jax.jit(lambda u8: model.apply(variables, augment.normalize(
      augment.resize(augment.to_unit(u8), size), "lite")))
  return lambda u8: np.asarray(fn(u8))


def reference(size):
  import torch
  import torch.nn.functional as F
  from efficientnet_lite_pytorch import EfficientNet
  torch.set_num_threads(2)
  model = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=efficientnet.weights_path("lite0")).eval()

  def run(u8):
    with torch.no_grad():
      x = torch.from_numpy(u8).permute(0, 3, 1, 2).float()
      x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
      return model.extract_features((x - 127.0) / 128.0).mean((2, 3)).numpy()
  return run


def time_it(fn, images, rounds):
  fn(images[:BATCH])  # compile / warm up
  best = []
  for _ in range(rounds):
    t = time.perf_counter()
    for i in range(0, len(images), BATCH):
      fn(images[i:i + BATCH])
    best.append(time.perf_counter() - t)
  return len(images) / min(best)


def extraction(args, images):
  print("\n| input px | ours images/s | PyTorch images/s | ratio | ours, grouped depthwise images/s |")
  print("|---|---|---|---|---|")
  for size in args.sizes:
    sides = {"ours": ours(size), "torch": reference(size), "grouped": ours(size, grouped=True)}
    rates = {k: time_it(f, images, args.rounds) for k, f in sides.items()}
    print(f"| {size} | {rates['ours']:.1f} | {rates['torch']:.1f} | "
          f"{rates['ours'] / rates['torch']:.2f}x | {rates['grouped']:.1f} |", flush=True)


def head_steps(args):
  print("\n| objective | batch | steps/s |")
  print("|---|---|---|")
  rng = np.random.default_rng(0)
  for name in ("nsh", "contrastive"):
    for batch in (256, 1024):
      c = cifar_prefix_pretrained.get_config()
      c.loss.name, c.train.batch_size = name, batch
      mesh = state_lib.make_mesh()
      data = NamedSharding(mesh, P("data"))
      inputs = encoder_input.create(c)  # the heads on cached features, no data needed
      st = jax.device_put(state_lib.create_train_state(c, jax.random.PRNGKey(0), inputs),
                          NamedSharding(mesh, P()))
      step = step_lib.make_train_step(c, mesh, inputs.views)
      feats = jax.device_put(rng.normal(size=(batch, c.features.views, 1280)).astype(np.float32),
                             data)
      labels = jax.device_put(np.zeros(batch, np.int32), data)
      st, m = step(st, feats, labels)
      jax.block_until_ready(m)
      t = time.perf_counter()
      for _ in range(args.steps):
        st, m = step(st, feats, labels)
      jax.block_until_ready(m)
      print(f"| {name} | {batch} | {args.steps / (time.perf_counter() - t):.1f} |", flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", type=int, nargs="+", default=[112, 160, 224])
  p.add_argument("--images", type=int, default=256)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--skip-extraction", action="store_true")
  args = p.parse_args()
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}; "
        f"jax {jax.__version__}, backend {jax.default_backend()}")
  npz = os.path.join(ROOT, "..", "shared", "data", "cifar10_prefix.npz")
  images = np.load(npz)["train_images"][:args.images]
  if not args.skip_extraction:
    extraction(args, images)
  head_steps(args)


if __name__ == "__main__":
  main()
