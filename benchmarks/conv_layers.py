"""[Retired goal: the >= 3x target is abandoned; kept as a measurement, BENCHMARKS.md.]

The small CNN's three 3x3 convolutions, forward + backward, in both of
``Conv3x3``'s forms and under both XLA:CPU settings.

Forms: ``im2col`` (``models.conv3x3_patches``: one matmul over the nine
shifted copies) and ``XLA conv`` (``lax.conv_general_dilated``).  Settings:
the flag ``xla_cpu.apply_defaults()`` sets (YNNPACK fusions off, :mod:`nsh_jax.xla_cpu`)
and XLA's defaults (a subprocess with ``NSH_JAX_KEEP_XLA_FLAGS=1``, since XLA
reads its flags once per process).  Batch 512 = two views of 256 images;
milliseconds = the fastest of ``--repeats`` runs of the jitted forward + VJP
(output, input gradient and kernel gradient).

  python benchmarks/conv_layers.py [--batch 512] [--repeats 5]
"""

import argparse
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax import models, xla_cpu

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point

LAYERS = ((16, 32, 64), (8, 64, 128), (4, 128, 256))  # (side, in, out) of conv0..conv2


def xla_conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


FORMS = {"im2col": models.conv3x3_patches, "xla": xla_conv}


def useful_gflop(batch):
  """{layer: GFLOP} of one pass (forward, input gradient or kernel gradient) of
  each 3x3 'SAME' convolution at ``batch``: ``2 * n * (3 s - 2)^2 * C_in * C_out``,
  the multiply-adds whose input tap falls inside the ``s x s`` image (padding
  taps, which are zero, not counted) -- the least any direct convolution does."""
  return {f"conv{i}": 2 * batch * (3 * side - 2) ** 2 * cin * cout / 1e9
          for i, (side, cin, cout) in enumerate(LAYERS)}


def timings(batch, repeats, forms=tuple(FORMS)):
  """{(layer, form): ms} for this process's XLA flags."""
  rng = np.random.default_rng(0)
  out = {}
  for i, (side, cin, cout) in enumerate(LAYERS):
    x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(batch, side, side, cout)), jnp.float32)
    for form in forms:
      f = FORMS[form]
      # The output is returned too: the VJP alone never reads it, so XLA would
      # drop the forward convolution and time only the two gradients.
      g = jax.jit(lambda x, k, f=f: (lambda y, vjp: (y, vjp(dy)))(*jax.vjp(f, x, k)))
      jax.block_until_ready(g(x, k))
      best = float("inf")
      for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(g(x, k))
        best = min(best, time.perf_counter() - t)
      out[f"conv{i}", form] = best * 1e3
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=512)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.raw:  # the XLA-defaults subprocess
    for (layer, form), ms in timings(args.batch, args.repeats).items():
      print(layer, form, ms)
    return
  ours = timings(args.batch, args.repeats)
  raw = subprocess.run([sys.executable, os.path.abspath(__file__), "--raw", "--batch",
                        str(args.batch), "--repeats", str(args.repeats)],
                       env=xla_cpu.defaults_env(), capture_output=True, text=True,
                       check=True).stdout
  default = {(l, f): float(ms) for l, f, ms in (line.split() for line in raw.splitlines())}
  print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}; "
        f"3x3 conv forward + backward, batch {args.batch}, fastest of {args.repeats} (ms)")
  print("| layer (in -> out) | im2col, YNN off | XLA conv, YNN off | im2col, XLA defaults "
        "| XLA conv, XLA defaults |")
  print("|---|---|---|---|---|")
  for i, (side, cin, cout) in enumerate(LAYERS):
    l = f"conv{i}"
    print(f"| {l} ({side}x{side}x{cin} -> {cout}) | {ours[l, 'im2col']:.1f} | {ours[l, 'xla']:.1f} "
          f"| {default[l, 'im2col']:.1f} | {default[l, 'xla']:.1f} |")


if __name__ == "__main__":
  main()
