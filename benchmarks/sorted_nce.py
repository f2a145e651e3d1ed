"""sorted_nce (exact, O(n^2 log n)) vs a naive jitted implementation that
materialises the soft permutations [n, n, n] and E [n, n, d_z], as the public
reimplementations do.  Forward + backward, same run, same inputs.

  python benchmarks/sorted_nce.py [--sizes 256 512 1024 4096 8192 16384] [--repeats 5]

Peak memory: XLA's compiled memory analysis (temp + argument + output bytes)
of each jitted forward+backward, also as a multiple of one n x n float32 array.
Naive is skipped where that exceeds the machine's memory budget
(--naive-budget-gb); above --time-max-n only the memory is reported (compiled,
not run).
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax import sorted_nce
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point


def naive_sorted_nce(a, b, za, zb, m=2, temperature=0.3):
  """The reimplementations' way: P [n, n, n], E = P @ zb [n, n, dz]."""
  d = a.shape[1]
  s = a @ b.T / (2 * d) + 0.5
  t = -jnp.sort(-s, axis=1)
  p = jax.nn.softmax(-jnp.abs(t[:, :, None] - s[:, None, :]) * d, axis=-1)  # [n, r, j]
  e = jnp.einsum("irj,jd->ird", p, zb)  # gathered latents
  c = jnp.einsum("ird,id->ir", e, za) / temperature
  neg = jax.nn.logsumexp(c[:, m:], axis=1, keepdims=True)
  return jnp.mean(jnp.logaddexp(c[:, :m], neg) - c[:, :m])


def compiled(fn, args):
  g = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
  c = g.lower(*args).compile()
  mem = c.memory_analysis()
  peak = None
  if mem is not None:
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  return c, peak


def timeit(c, args, repeats):
  jax.block_until_ready(c(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(c(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 4096, 8192, 16384])
  ap.add_argument("--time-max-n", type=int, default=4096)
  ap.add_argument("--bits", type=int, default=64)
  ap.add_argument("--latent", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--naive-budget-gb", type=float, default=16.0)
  args = ap.parse_args()
  print(f"# sorted_nce forward+backward, {args.bits} bits, latent {args.latent}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| n | ours (ms) | naive (ms) | speed-up | ours peak (MiB) | ours peak / n^2 float32 "
        "| naive peak (MiB) |")
  print("|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for n in args.sizes:
    a = jnp.asarray(np.tanh(rng.normal(size=(n, args.bits))), jnp.float32)
    b = jnp.asarray(np.tanh(rng.normal(size=(n, args.bits))), jnp.float32)
    za = rng.normal(size=(n, args.latent))
    zb = rng.normal(size=(n, args.latent))
    za = jnp.asarray(za / np.linalg.norm(za, axis=1, keepdims=True), jnp.float32)
    zb = jnp.asarray(zb / np.linalg.norm(zb, axis=1, keepdims=True), jnp.float32)
    xs = (a, b, za, zb)
    ours_c, ours_peak = compiled(lambda *x: sorted_nce(*x), xs)
    timed = n <= args.time_max_n
    ours_t = timeit(ours_c, xs, args.repeats) if timed else None
    naive_t = naive_peak = None
    naive_c, naive_peak = compiled(naive_sorted_nce, xs)
    if timed and naive_peak is not None and naive_peak < args.naive_budget_gb * 2**30:
      naive_t = timeit(naive_c, xs, args.repeats)
      lo, _ = ours_c(*xs)
      ln, _ = naive_c(*xs)
      assert abs(float(lo) - float(ln)) < 1e-3 * abs(float(ln)), (float(lo), float(ln))
    mib = lambda v: f"{v / 2**20:.0f}" if v is not None else "n/a"
    fits = naive_peak is not None and naive_peak < args.naive_budget_gb * 2**30
    naive_ms = (f"{naive_t * 1e3:.1f}" if naive_t else "not run" if fits else "does not fit")
    ratio = f"{naive_t / ours_t:.0f}x" if naive_t else "-"
    ours_ms = f"{ours_t * 1e3:.1f}" if ours_t else "not run"
    per_n2 = f"{ours_peak / (4 * n * n):.2f}" if ours_peak is not None else "n/a"
    print(f"| {n} | {ours_ms} | {naive_ms} | {ratio} | {mib(ours_peak)} | {per_n2} | "
          f"{mib(naive_peak)} |", flush=True)


if __name__ == "__main__":
  main()
