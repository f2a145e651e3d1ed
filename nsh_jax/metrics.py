"""Retrieval metrics of the deep-hashing literature, one implementation.

Ranking: the database is ranked by Hamming distance of sign codes (``x >= 0`` is
``+1``), ties broken by ``tie_keys`` where given (the protocol's seeded, label-agnostic
rank of each database image), else by database order (lower index first) --
deterministic, unlike DeepHash-pytorch's unstable argsort.  ``rerank = R`` re-orders
each query's Hamming top-``R`` by the asymmetric score of its real-valued code
(:func:`nsh_jax.retrieval.rerank`).  Relevance: same class for int
labels ``[n]``; at least one shared label for multi-hot labels ``[n, C]``.

* ``AP@k = (1/R_k) sum_{r<=k} P@r * rel_r`` with ``R_k`` the relevant items in
  the top ``k``; a query with none scores 0; mAP averages over all queries.
* precision/recall at Hamming radius ``r`` (items with distance ``<= r``); a
  query that retrieves nothing has precision 0 (the P@H<=2 convention).
* P@N: precision of the top ``N`` in the ranking.

No Python loop per query and no ``[q, n]`` matrix: the ranking and the
per-radius counts are compiled O(n) passes per query in
:mod:`nsh_jax.retrieval` (memory ``O(q * k)``), so 10,000 queries x 1,000,000
database codes fits in memory.  Imports nothing from training.
"""

from __future__ import annotations

from typing import Optional, Sequence

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


def _relevance(idx, query_labels, db_labels):
  """Relevance ``[q, k]`` bool of ranked database indices ``idx`` ``[q, k]``: the one rule
  of :func:`nsh_jax.retrieval.label_sets`, at least one shared label (int labels: the same
  class)."""
  qs, ds = retrieval.label_sets(query_labels, db_labels)
  return np.any((qs[:, None, :] & ds[idx]) != 0, axis=-1)


def _ranked_relevance(query_codes, db_codes, query_labels, db_labels, k, tie_keys=None,
                      rerank: int = 0):
  """Relevance ``[q, k]`` bool of each query's top-``k`` items in Hamming order (ties by
  ``tie_keys``); with ``rerank = R > 0`` the first ``R`` re-ordered by the asymmetric score
  of the real-valued query codes (:func:`nsh_jax.retrieval.rerank`)."""
  qp, dp = retrieval.pack_codes(query_codes), retrieval.pack_codes(db_codes)
  idx = retrieval.search(qp, dp, max(k, rerank), tie_keys)[1]
  if rerank:
    r = min(rerank, idx.shape[1])
    order = retrieval.rerank(query_codes, dp, idx[:, :r], np.shape(query_codes)[1])
    idx[:, :r] = np.take_along_axis(idx[:, :r], order, 1)
  return _relevance(idx[:, :k], query_labels, db_labels)


def _map_of(rel) -> float:
  return float(np.mean(_average_precision(rel)))


def _precision_at_n_of(rel, ns) -> dict:
  hits = np.cumsum(rel, axis=1)
  return {n: float(np.mean(hits[:, n - 1] / n)) for n in ns}


def _cutoff(top_k, n) -> int:
  k = n if top_k is None else min(int(top_k), n)
  if k < 1:
    raise ValueError(f"top_k must be >= 1; got {top_k}")
  return k


def _average_precision(rel: np.ndarray) -> np.ndarray:
  """AP of each row of a ranked relevance matrix ``[q, k]`` (0 where none relevant).

  ``AP = (1/R) sum_r P@r * rel_r`` with ``P@r = cumsum(rel)_r / r``.  NumPy, not
  jit: it is O(q k) and a compile per new ``[q, k]`` shape would cost more.
  """
  rel = np.asarray(rel, np.float64)
  precision_at = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
  num_rel = rel.sum(axis=1)
  return np.where(num_rel > 0, (precision_at * rel).sum(1) / np.maximum(num_rel, 1), 0.0)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                           top_k: Optional[int] = None, tie_keys=None, rerank: int = 0) -> float:
  """mAP@top_k of Hamming ranking (``top_k=None``: the whole database, mAP@all).

  Args:
    query_codes: ``[q, bits]`` real or +-1 codes (signs are taken).
    db_codes: ``[n, bits]``.
    query_labels, db_labels: ``[q]``/``[n]`` ints or ``[q, C]``/``[n, C]`` multi-hot.
    top_k: cut-off ``k``; larger than ``n`` means ``n``.
    tie_keys: ``[n]``: equal distances ranked by key (default: by database index).
    rerank: ``R > 0``: the Hamming top-``R`` re-ordered by the asymmetric score of the
      real-valued ``query_codes`` (:func:`nsh_jax.retrieval.rerank`).

  Returns:
    Python float.
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  k = _cutoff(top_k, x.shape[0])
  return _map_of(_ranked_relevance(q, x, ql, dl, k, tie_keys, rerank))


def cosine_map(query, db, query_labels, db_labels, depths: Sequence[Optional[int]] = (1000,)
               ) -> dict:
  """``{depth: mAP@depth}`` of ranking the database by cosine similarity of continuous
  vectors (:func:`nsh_jax.retrieval.cosine_search`; depth ``None``: the whole database) --
  what binary codes made from them can at best keep: the ceiling row.  One ranking to the
  deepest depth serves every depth (AP@k reads the top ``k`` only)."""
  q, x, ql, dl = _check(query, db, query_labels, db_labels)
  ks = {d: _cutoff(d, x.shape[0]) for d in depths}
  rel = _relevance(retrieval.cosine_search(q, x, max(ks.values()))[1], ql, dl)
  return {d: _map_of(rel[:, :k]) for d, k in ks.items()}


def precision_at_n(query_codes, db_codes, query_labels, db_labels,
                   ns: Sequence[int] = (1, 10, 50, 100, 200, 500, 1000)) -> dict:
  """Mean precision of the top ``N`` retrieved items for each ``N`` in ``ns``."""
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  ns = [int(min(v, x.shape[0])) for v in ns]
  return _precision_at_n_of(_ranked_relevance(q, x, ql, dl, max(ns)), ns)


def precision_recall_by_radius(query_codes, db_codes, query_labels, db_labels) -> dict:
  """Precision and recall of retrieving every item within Hamming radius ``r``.

  Returns ``{'radius': [bits+1], 'precision': [bits+1], 'recall': [bits+1]}``,
  each averaged over queries (precision 0 for an empty retrieval, recall 0 for a
  query with no relevant item).  One pass over the database per query (no
  ``[q, n]`` matrix), counting items and relevant items at each distance.
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  bits = q.shape[1]
  all_c, rel_c = retrieval.radius_counts(retrieval.pack_codes(q), retrieval.pack_codes(x), ql, dl)
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
                   ns: Sequence[int] = (1, 10, 50, 100, 200, 500, 1000), tie_keys=None) -> dict:
  """The standard report for one code length: mAP@k, P@H<=2, P@N, PR curve.

  One Hamming ranking (to ``max(k, max(ns))``, ties by ``tie_keys``) serves both mAP@k
  and P@N.
  """
  q, x, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  k = _cutoff(top_k, x.shape[0])
  ns = [int(min(v, x.shape[0])) for v in ns]
  rel = _ranked_relevance(q, x, ql, dl, max(k, max(ns)), tie_keys)
  pr = precision_recall_by_radius(q, x, ql, dl)
  return {
      "map": _map_of(rel[:, :k]),
      "top_k": top_k,
      "p_at_h2": float(pr["precision"][min(2, len(pr["precision"]) - 1)]),
      "precision_at_n": _precision_at_n_of(rel, ns),
      "pr_curve": {name: np.asarray(v).tolist() for name, v in pr.items()},
  }
