"""mAP@1000 (1,000 queries x 59,000 database codes, 64 bits) against a NumPy
per-query loop of the same definition, Hamming top-k search throughput over
1,000,000 codes against faiss.IndexBinaryFlat, and the cost of asymmetric re-ranking
(Hamming top-R, then re-ordered by the query's real-valued code) against the Hamming
top-R alone and faiss, at 59,000 and 1,000,000 codes; same run, same data.

  python benchmarks/metrics.py [--db 59000] [--search-db 1000000] [--search-queries 1000]
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from nsh_jax import metrics, retrieval


def numpy_loop_map(q, x, ql, dl, k):
  """DeepHash-style CalcTopMap, corrected: per query, +-1 dot Hamming, stable argsort."""
  qs, xs = np.where(q >= 0, 1, -1).astype(np.float32), np.where(x >= 0, 1, -1).astype(np.float32)
  bits = q.shape[1]
  aps = np.zeros(len(q))
  for i in range(len(q)):
    dist = (bits - xs @ qs[i]) / 2
    order = np.argsort(dist, kind="stable")[:k]
    rel = (dl[order] == ql[i]).astype(np.float64)
    if rel.sum():
      aps[i] = (np.cumsum(rel) / np.arange(1, k + 1) * rel).sum() / rel.sum()
  return aps.mean()


def large_run(rng, bits):
  """The issue's scale: 10,000 queries x 1,000,000 database codes, mAP@1000."""
  import resource
  x = rng.normal(size=(1_000_000, bits)).astype(np.float32)
  q = rng.normal(size=(10_000, bits)).astype(np.float32)
  dl, ql = rng.integers(0, 100, len(x)), rng.integers(0, 100, len(q))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  t = time.perf_counter()
  value = metrics.mean_average_precision(q, x, ql, dl, 1000)
  t = time.perf_counter() - t
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"\nmAP@1000, 10,000 queries x 1,000,000 codes: {value:.4f} in {t:.1f} s; "
        f"peak RSS {peak:.2f} GiB (inputs alone: {(x.nbytes + q.nbytes) / 2**30:.2f} GiB; "
        f"{before:.2f} GiB before the call)\n")


def rerank_timing(args, rng):
  """ms per query: the Hamming top-R (ours, faiss) and the Hamming top-R re-ranked."""
  try:
    import faiss
  except ImportError:
    faiss = None
  print(f"\n| database codes | Hamming top-{args.rerank} (ms/query) | + asymmetric re-ranking "
        f"(ms/query) | re-ranked / Hamming | faiss IndexBinaryFlat top-{args.rerank} "
        f"(ms/query) |")
  print("|---|---|---|---|---|")
  q_real = rng.normal(size=(args.search_queries, args.bits)).astype(np.float32)
  qp = retrieval.pack_codes(q_real)
  for n in (59_000, args.search_db):
    db = retrieval.pack_codes(rng.normal(size=(n, args.bits)).astype(np.float32))
    retrieval.search(qp[:4], db, args.rerank)  # compile (or load the cached kernel)
    best = {}
    for name, fn in (("hamming", lambda: retrieval.search(qp, db, args.rerank)),
                     ("reranked", lambda: retrieval.rerank(
                         q_real, db, retrieval.search(qp, db, args.rerank)[1], args.bits))):
      times = []
      for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
      best[name] = 1000 * min(times) / args.search_queries
    f_ms = "faiss not installed"
    if faiss is not None:
      index = faiss.IndexBinaryFlat(args.bits)
      index.add(db)
      t = time.perf_counter()
      index.search(qp, args.rerank)
      f_ms = f"{1000 * (time.perf_counter() - t) / args.search_queries:.3f}"
    print(f"| {n:,} | {best['hamming']:.3f} | {best['reranked']:.3f} | "
          f"{best['reranked'] / best['hamming']:.2f} | {f_ms} |", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--queries", type=int, default=1000)
  ap.add_argument("--db", type=int, default=59000)
  ap.add_argument("--bits", type=int, default=64)
  ap.add_argument("--search-db", type=int, default=1_000_000)
  ap.add_argument("--search-queries", type=int, default=1000)
  ap.add_argument("--k", type=int, default=100)
  ap.add_argument("--rerank", type=int, default=1000, help="the shortlist R re-ranked")
  ap.add_argument("--large", action="store_true",
                  help="also mAP@1000 for 10,000 queries x 1,000,000 codes: time and peak memory")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  print(f"# {platform.machine()}, {os.cpu_count()} cores; mAP@1000 {args.queries} x {args.db} "
        f"at {args.bits} bits; search {args.search_queries} queries x {args.search_db} codes, k={args.k}")
  # Class-structured codes so the ranking is non-trivial (ties included).
  centers = rng.normal(size=(10, args.bits))
  dl, ql = rng.integers(0, 10, args.db), rng.integers(0, 10, args.queries)
  x = centers[dl] + 1.5 * rng.normal(size=(args.db, args.bits))
  q = centers[ql] + 1.5 * rng.normal(size=(args.queries, args.bits))
  metrics.mean_average_precision(q[:8], x, ql[:8], dl, 1000)  # compile
  t = time.perf_counter()
  ours = metrics.mean_average_precision(q, x, ql, dl, 1000)
  t_ours = time.perf_counter() - t
  t = time.perf_counter()
  ref = numpy_loop_map(q, x, ql, dl, 1000)
  t_ref = time.perf_counter() - t
  print("| metric | nsh_jax (s) | NumPy per-query loop (s) | speed-up | values |")
  print("|---|---|---|---|---|")
  print(f"| mAP@1000 | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.1f}x | "
        f"{ours:.6f} vs {ref:.6f} ({'equal' if abs(ours - ref) < 1e-6 else 'DIFFER'}) |")

  db = retrieval.pack_codes(rng.normal(size=(args.search_db, args.bits)).astype(np.float32))
  qp = retrieval.pack_codes(rng.normal(size=(args.search_queries, args.bits)).astype(np.float32))
  retrieval.search(qp[:4], db, args.k)  # compile (or load the cached kernel)
  t = time.perf_counter()
  d_ours, i_ours = retrieval.search(qp, db, args.k)
  t_ours = time.perf_counter() - t
  try:
    import faiss
  except ImportError:
    print(f"| search | {args.search_queries / t_ours:.0f} q/s | faiss not installed | - | - |")
    rerank_timing(args, rng)
    return
  index = faiss.IndexBinaryFlat(args.bits)
  index.add(db)
  t = time.perf_counter()
  d_f, i_f = index.search(qp, args.k)
  t_f = time.perf_counter() - t
  same_d = np.array_equal(np.sort(d_f, 1), d_ours)
  print(f"\n| search over {args.search_db:,} codes | nsh_jax (queries/s) | faiss IndexBinaryFlat "
        f"({faiss.omp_get_max_threads()} threads, queries/s) | ours / faiss | distances equal |")
  print("|---|---|---|---|---|")
  print(f"| k={args.k} | {args.search_queries / t_ours:.0f} | {args.search_queries / t_f:.0f} | "
        f"{t_f / t_ours:.2f} | {same_d} |")
  rerank_timing(args, rng)
  if args.large:
    large_run(rng, args.bits)


if __name__ == "__main__":
  main()
