"""Retrieval metrics of the deep-hashing literature, one implementation.

Ranking: the database is ranked by Hamming distance of sign codes (``x >= 0`` is
``+1``), ties broken by database order (lower index first) -- deterministic,
unlike DeepHash-pytorch's unstable argsort.  Relevance: same class for int
labels ``[n]``; at least one shared label for multi-hot labels ``[n, C]``.

* ``AP@k = (1/R_k) sum_{r<=k} P@r * rel_r`` with ``R_k`` the relevant items in
  the top ``k``; a query with none scores 0; mAP averages over all queries.
* precision/recall at Hamming radius ``r`` (items with distance ``<= r``); a
  query that retrieves nothing has precision 0 (the P@H<=2 convention).
* P@N: precision of the top ``N`` in the ranking.

Everything is computed in JAX in query chunks (no Python loop per query), so
10,000 queries x 1,000,000 database codes fits in memory.  Imports nothing
from training.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax import retrieval


def _check(query_codes, db_codes, query_labels, db_labels):
  q, x = np.asarray(query_codes), np.asarray(db_codes)
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
    raise ValueError(f"codes must be [n, bits] with equal bits; got query {q.shape}, "
                     f"database {x.shape}")
  if ql.shape[0] != q.shape[0] or dl.shape[0] != x.shape[0]:
    raise ValueError(f"labels must have one row per code; got query labels {ql.shape} for "
                     f"{q.shape[0]} codes, database labels {dl.shape} for {x.shape[0]} codes")
  if ql.ndim != dl.ndim or ql.ndim not in (1, 2) or (ql.ndim == 2 and ql.shape[1] != dl.shape[1]):
    raise ValueError(f"labels must both be [n] ints or [n, C] multi-hot; got {ql.shape} "
                     f"and {dl.shape}")
  if x.shape[0] == 0 or q.shape[0] == 0:
    raise ValueError(f"empty query or database: {q.shape[0]} queries, {x.shape[0]} items")
  return q, x, ql, dl


def _relevance(query_labels, item_labels):
  """Relevance of items to queries: same class, or >= 1 shared label (multi-hot).

  ``query_labels`` ``[q]`` / ``[q, C]``; ``item_labels`` ``[q | 1, k]`` /
  ``[q | 1, k, C]`` (each query's own items, or one list shared by all).
  Returns ``[q, k]`` bool.  The one relevance rule every metric here uses.
  """
  if query_labels.ndim == 1:
    return item_labels == query_labels[:, None]
  shared = jnp.einsum("qkc,qc->qk", item_labels.astype(jnp.float32),
                      query_labels.astype(jnp.float32))
  return shared > 0


def _ranked_relevance(query_codes, db_codes, query_labels, db_labels, k, query_chunk):
  """Relevance ``[q, k]`` of each query's top-``k`` items in Hamming order."""
  qp, dp = retrieval.pack_codes(query_codes), retrieval.pack_codes(db_codes)
  _, idx = retrieval.search(qp, dp, k, query_chunk=query_chunk)
  return np.asarray(_relevance(jnp.asarray(query_labels), jnp.asarray(np.asarray(db_labels)[idx])))


def _map_of(rel) -> float:
  return float(np.mean(np.asarray(_average_precision(jnp.asarray(rel)))))


def _precision_at_n_of(rel, ns) -> dict:
  hits = np.cumsum(rel, axis=1)
  return {n: float(np.mean(hits[:, n - 1] / n)) for n in ns}


def _cutoff(top_k, n) -> int:
  k = n if top_k is None else min(int(top_k), n)
  if k < 1:
    raise ValueError(f"top_k must be >= 1; got {top_k}")
  return k


@jax.jit
def _average_precision(rel):
  """AP of each row of a ranked relevance matrix ``[q, k]`` (0 where none relevant)."""
  rel = rel.astype(jnp.float32)
  ranks = jnp.arange(1, rel.shape[1] + 1, dtype=jnp.float32)
  precision_at = jnp.cumsum(rel, axis=1) / ranks
  num_rel = jnp.sum(rel, axis=1)
  return jnp.where(num_rel > 0, jnp.sum(precision_at * rel, 1) / jnp.maximum(num_rel, 1), 0.0)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                           top_k: Optional[int] = None, query_chunk: int = 256) -> float:
  """mAP@top_k of Hamming ranking (``top_k=None``: the whole database, mAP@all).

  Args:
    query_codes: ``[q, bits]`` real or +-1 codes (signs are taken).
    db_codes: ``[n, bits]``.
    query_labels, db_labels: ``[q]``/``[n]`` ints or ``[q, C]``/``[n, C]`` multi-hot.
    top_k: cut-off ``k``; larger than ``n`` means ``n``.

  Returns:
    Python float.
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  k = _cutoff(top_k, x.shape[0])
  return _map_of(_ranked_relevance(q, x, ql, dl, k, query_chunk))


def precision_at_n(query_codes, db_codes, query_labels, db_labels,
                   ns: Sequence[int] = (1, 10, 50, 100, 200, 500, 1000),
                   query_chunk: int = 256) -> dict:
  """Mean precision of the top ``N`` retrieved items for each ``N`` in ``ns``."""
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  ns = [int(min(v, x.shape[0])) for v in ns]
  return _precision_at_n_of(_ranked_relevance(q, x, ql, dl, max(ns), query_chunk), ns)


@jax.jit
def _radius_counts(query_words, db_words, rel):
  """Per query and Hamming distance: count of all items and of relevant items."""
  bits = query_words.shape[1] * 32
  dist = retrieval.hamming_distance_words(query_words, db_words)  # [q, n]
  onehot_all = jax.nn.one_hot(dist, bits + 1, dtype=jnp.float32)  # [q, n, D]
  all_counts = jnp.sum(onehot_all, axis=1)
  rel_counts = jnp.einsum("qnd,qn->qd", onehot_all, rel.astype(jnp.float32))
  return all_counts, rel_counts


def precision_recall_by_radius(query_codes, db_codes, query_labels, db_labels,
                               query_chunk: int = 64, db_chunk: int = 16384) -> dict:
  """Precision and recall of retrieving every item within Hamming radius ``r``.

  Returns ``{'radius': [bits+1], 'precision': [bits+1], 'recall': [bits+1]}``,
  each averaged over queries (precision 0 for an empty retrieval, recall 0 for a
  query with no relevant item).
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  bits = q.shape[1]
  qw = retrieval.to_words(retrieval.pack_codes(q))
  xw = retrieval.to_words(retrieval.pack_codes(x))
  width = qw.shape[1] * 32 + 1
  all_c = np.zeros((q.shape[0], width))
  rel_c = np.zeros((q.shape[0], width))
  for i in range(0, q.shape[0], query_chunk):
    for j in range(0, x.shape[0], db_chunk):
      rel = _relevance(jnp.asarray(ql[i:i + query_chunk]), jnp.asarray(dl[None, j:j + db_chunk]))
      a, r = _radius_counts(jnp.asarray(qw[i:i + query_chunk]),
                            jnp.asarray(xw[j:j + db_chunk]), rel)
      all_c[i:i + query_chunk] += np.asarray(a)
      rel_c[i:i + query_chunk] += np.asarray(r)
  all_c, rel_c = np.cumsum(all_c, 1)[:, :bits + 1], np.cumsum(rel_c, 1)[:, :bits + 1]
  total_rel = rel_c[:, -1:]
  precision = np.where(all_c > 0, rel_c / np.maximum(all_c, 1), 0.0).mean(0)
  recall = np.where(total_rel > 0, rel_c / np.maximum(total_rel, 1), 0.0).mean(0)
  return {"radius": np.arange(bits + 1), "precision": precision, "recall": recall}


def precision_within_radius(query_codes, db_codes, query_labels, db_labels,
                            radius: int = 2) -> float:
  """P@H<=radius: mean precision of items within Hamming ``radius`` (0 if none)."""
  pr = precision_recall_by_radius(query_codes, db_codes, query_labels, db_labels)
  return float(pr["precision"][min(radius, len(pr["precision"]) - 1)])


def evaluate_codes(query_codes, db_codes, query_labels, db_labels,
                   top_k: Optional[int] = 1000,
                   ns: Sequence[int] = (1, 10, 50, 100, 200, 500, 1000)) -> dict:
  """The standard report for one code length: mAP@k, P@H<=2, P@N, PR curve.

  One Hamming ranking (to ``max(k, max(ns))``) serves both mAP@k and P@N.
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  k = _cutoff(top_k, x.shape[0])
  ns = [int(min(v, x.shape[0])) for v in ns]
  rel = _ranked_relevance(q, x, ql, dl, max(k, max(ns)), 256)
  pr = precision_recall_by_radius(q, x, ql, dl)
  return {
      "map": _map_of(rel[:, :k]),
      "top_k": top_k,
      "p_at_h2": float(pr["precision"][min(2, len(pr["precision"]) - 1)]),
      "precision_at_n": _precision_at_n_of(rel, ns),
      "pr_curve": {name: np.asarray(v).tolist() for name, v in pr.items()},
  }
