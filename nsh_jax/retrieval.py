"""Binary codes for retrieval: sign, bit packing, Hamming top-k, and an on-disk index.

Codes travel as packed bits: ``[n, ceil(d/8)]`` uint8, most significant bit
first (``numpy.packbits`` order, the layout ``faiss.IndexBinary*`` takes), bit
``1`` for a ``+1`` code.  Search views those bytes as uint64 words and
computes Hamming distance as ``popcount(q XOR x)``; ranking is by distance,
ties broken by database order (lower index first) -- the convention every
metric in :mod:`nsh_jax.metrics` uses too.

Ranking is data-dependent selection, which XLA's CPU backend only offers as
comparison sorts (``sort``/``top_k``; slower than a counting sort, BENCHMARKS.md),
so the three kernels below -- distance matrix, top-k, per-radius counts -- are
compiled with Numba: plain loops over packed words, parallel over queries.

This module imports nothing from training.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Tuple

import numba
from numba.extending import intrinsic
import numpy as np

from nsh_jax.codes import binarize
from nsh_jax.errors import CodesFileError

__all__ = ["binarize", "pack_codes", "unpack_codes", "to_words", "label_sets",
           "hamming_distance", "search", "rerank", "cosine_search", "radius_counts", "save_index",
           "load_index", "save_faiss_index", "INDEX_FORMAT"]

INDEX_FORMAT = "nsh-jax-index/1"


def pack_codes(codes) -> np.ndarray:
  """Real or +-1 codes ``[n, d]`` -> packed bits ``[n, ceil(d/8)]`` uint8 (``x >= 0`` -> 1)."""
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D [n, bits]; got shape {codes.shape}")
  return np.packbits(binarize(codes) > 0, axis=1)


def unpack_codes(packed, bits: int) -> np.ndarray:
  """Packed bits ``[n, ceil(bits/8)]`` uint8 -> +-1 int8 codes ``[n, bits]``."""
  packed = np.asarray(packed)
  if packed.ndim != 2 or packed.dtype != np.uint8:
    raise ValueError(f"packed codes must be 2-D uint8; got {packed.dtype} {packed.shape}")
  if packed.shape[1] != (bits + 7) // 8:
    raise ValueError(f"packed codes have {packed.shape[1]} bytes per row; "
                     f"{bits} bits need {(bits + 7) // 8}")
  bits01 = np.unpackbits(packed, axis=1, count=bits)
  return (2 * bits01.astype(np.int8) - 1).astype(np.int8)


def to_words(packed) -> np.ndarray:
  """uint8 ``[n, B]`` -> uint64 ``[n, ceil(B/8)]`` (zero padded), the popcount layout.

  Padding bits are 0 in every code, so they never add to a Hamming distance.
  """
  packed = np.asarray(packed, np.uint8)
  n, nbytes = packed.shape
  pad = (-nbytes) % 8
  if pad:
    packed = np.concatenate([packed, np.zeros((n, pad), np.uint8)], axis=1)
  return np.ascontiguousarray(packed).view(np.uint64)


def label_sets(query_labels, db_labels) -> Tuple[np.ndarray, np.ndarray]:
  """Labels -> bit sets ``[n, L]`` uint64 so that relevance is ``any(q & x)``.

  Int labels ``[n]`` become one bit per class (so "shares a label" is "same
  class"); multi-hot ``[n, C]`` keep their bits.  The one encoding of the
  relevance rule that the compiled kernels use.
  """
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if ql.ndim == 1:
    classes, inverse = np.unique(np.concatenate([ql, dl]), return_inverse=True)
    onehot = np.zeros((inverse.shape[0], len(classes)), bool)
    onehot[np.arange(inverse.shape[0]), inverse] = True
    qh, dh = onehot[:ql.shape[0]], onehot[ql.shape[0]:]
  else:
    qh, dh = ql > 0, dl > 0
  return to_words(np.packbits(qh, axis=1)), to_words(np.packbits(dh, axis=1))


@intrinsic
def _popcount(typingctx, x):
  """Population count of a uint64 (one ``popcnt`` instruction)."""
  del typingctx, x

  def codegen(context, builder, signature, args):
    del context, signature
    return builder.ctpop(args[0])

  return numba.types.uint64(numba.types.uint64), codegen


@numba.njit(inline="always")
def _distances(qw, i, dw, out):
  """``out[j] = popcount(q_i XOR x_j)`` for every database row ``j``.

  One query against the whole database in a loop with no other work, so LLVM
  vectorises it; 1/2/4-word codes (64/128/256 bits) get unrolled bodies.
  """
  n, w = dw.shape
  if w == 1:
    a = qw[i, 0]
    for j in range(n):
      out[j] = _popcount(a ^ dw[j, 0])
  elif w == 2:
    a, b = qw[i, 0], qw[i, 1]
    for j in range(n):
      out[j] = _popcount(a ^ dw[j, 0]) + _popcount(b ^ dw[j, 1])
  elif w == 4:
    a, b, c, e = qw[i, 0], qw[i, 1], qw[i, 2], qw[i, 3]
    for j in range(n):
      out[j] = (_popcount(a ^ dw[j, 0]) + _popcount(b ^ dw[j, 1])
                + _popcount(c ^ dw[j, 2]) + _popcount(e ^ dw[j, 3]))
  else:
    for j in range(n):
      s = 0
      for t in range(w):
        s += _popcount(qw[i, t] ^ dw[j, t])
      out[j] = s


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _hamming_matrix(qw, dw, out):  # pragma: no cover - compiled
  for i in numba.prange(qw.shape[0]):
    _distances(qw, i, dw, out[i])


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _topk_kernel(qw, dw, k, out_d, out_i, scratch):  # pragma: no cover - compiled
  """Counting sort on distance, stable in database order, cut at ``k``.

  Per query: (1) distances into the worker's scratch row; (2) their
  histogram, whose prefix sums are where each distance's run starts in the
  ranking; (3) walk the database in order, dropping item ``j`` into its run's
  next slot if that slot is < k (stop once k are placed).  O(n), exact, ties
  by lower index by construction.  One scratch row per worker: no allocation
  per query.
  """
  n, nq = dw.shape[0], qw.shape[0]
  bits = 64 * qw.shape[1]
  workers = scratch.shape[0]
  for worker in numba.prange(workers):
    dist = scratch[worker]
    start = np.empty(bits + 1, np.int64)
    for i in range(worker, nq, workers):
      _distances(qw, i, dw, dist)
      start[:] = 0
      for j in range(n):
        start[dist[j]] += 1
      total = 0
      for b in range(bits + 1):
        c = start[b]
        start[b] = total
        total += c
      filled = 0
      for j in range(n):
        d = dist[j]
        slot = start[d]
        if slot < k:
          out_i[i, slot] = j
          out_d[i, slot] = d
          start[d] = slot + 1
          filled += 1
          if filled == k:
            break


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _radius_kernel(qw, dw, ql, dl, all_counts, rel_counts, scratch):  # pragma: no cover
  """Per query and distance: items at that distance, and relevant ones among them."""
  n, nq = dw.shape[0], qw.shape[0]
  workers = scratch.shape[0]
  for worker in numba.prange(workers):
    dist = scratch[worker]
    for i in range(worker, nq, workers):
      _distances(qw, i, dw, dist)
      for j in range(n):
        d = dist[j]
        all_counts[i, d] += 1
        shared = 0
        for t in range(ql.shape[1]):
          shared |= ql[i, t] & dl[j, t]
        if shared != 0:
          rel_counts[i, d] += 1


def _scratch(nq: int, n: int, words: int) -> np.ndarray:
  """One distance row per worker thread (uint8 while distances fit in it)."""
  workers = max(1, min(numba.get_num_threads(), nq))
  return np.empty((workers, n), np.uint8 if 64 * words < 256 else np.uint16)


def _checked_words(query_packed, db_packed) -> Tuple[np.ndarray, np.ndarray]:
  query_packed = np.asarray(query_packed)
  db_packed = np.asarray(db_packed)
  for name, arr in (("query codes", query_packed), ("database codes", db_packed)):
    if arr.ndim != 2 or arr.dtype != np.uint8:
      raise ValueError(f"{name} must be packed 2-D uint8; got {arr.dtype} {arr.shape}")
  if query_packed.shape[1] != db_packed.shape[1]:
    raise ValueError(f"query codes have {query_packed.shape[1]} bytes per row, database "
                     f"codes {db_packed.shape[1]}: they must have the same code length")
  if db_packed.shape[0] == 0:
    raise ValueError("the database is empty")
  return to_words(query_packed), to_words(db_packed)


def hamming_distance(query_codes, db_codes) -> np.ndarray:
  """Hamming distances ``[q, n]`` int32 between real/+-1 codes (signs taken).

  Computed as ``popcount(q XOR x)`` on packed bits, the same routine search
  and the metrics use; equals ``(d - <sign q, sign x>) / 2``.
  """
  qw, dw = _checked_words(pack_codes(query_codes), pack_codes(db_codes))
  out = np.empty((qw.shape[0], dw.shape[0]), np.int32)
  _hamming_matrix(qw, dw, out)
  return out


def _key_order(tie_keys, n: int):
  """Database rows sorted by ``tie_keys`` (``None`` when there are none or the rows are
  already in key order)."""
  if tie_keys is None:
    return None
  keys = np.asarray(tie_keys)
  if keys.shape != (n,):
    raise ValueError(f"tie_keys must be [n] = [{n}]; got shape {keys.shape}")
  return None if np.all(keys[1:] >= keys[:-1]) else np.argsort(keys, kind="stable")


def search(query_packed, db_packed, k: int, tie_keys=None) -> Tuple[np.ndarray, np.ndarray]:
  """Exact Hamming k-nearest neighbours of packed queries in a packed database.

  A compiled counting sort per query (``O(n)`` time, one ``n``-byte scratch
  row per thread, queries spread over all cores); nothing ``[q, n]`` is
  materialised, so the database size is bounded only by its own memory.

  Args:
    query_packed: ``[q, B]`` uint8 packed codes.
    db_packed: ``[n, B]`` uint8 packed codes (same ``B``).
    k: neighbours per query (clipped to ``n``).
    tie_keys: ``[n]`` optional: equal distances are ordered by these keys (the tie
      rule, e.g. :attr:`nsh_jax.protocol.Splits.db_keys`); default: by database index.

  Returns:
    ``(distances [q, k] int32, indices [q, k] int64)``, sorted by distance then
    tie key (database index).
  """
  qw, dw = _checked_words(query_packed, db_packed)
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}")
  order = _key_order(tie_keys, dw.shape[0])
  if order is not None:  # the counting sort is stable: rows in key order break ties by key
    dw = np.ascontiguousarray(dw[order])
  k = min(int(k), dw.shape[0])
  dists = np.empty((qw.shape[0], k), np.int32)
  idxs = np.empty((qw.shape[0], k), np.int64)
  _topk_kernel(qw, dw, k, dists, idxs, _scratch(qw.shape[0], dw.shape[0], qw.shape[1]))
  return dists, (idxs if order is None else order[idxs])


def rerank(query_codes, db_packed, idx, bits: int, chunk: int = 64) -> np.ndarray:
  """The order ``[q, R]`` (positions in each row of ``idx``) that sorts each query's
  shortlist ``idx`` ``[q, R]`` (e.g. its Hamming top-``R``) by the asymmetric score
  ``<tanh(c_q), b_j>``: the query's real-valued code ``c_q`` (``[q, bits]``, whose signs
  are its binary code) against the database's +-1 bits ``b_j``, largest first; equal
  scores keep their shortlist order.  The database stays one bit per dimension; the cost
  is one ``[R, bits]`` product per query.  Apply it with ``np.take_along_axis``."""
  q = np.tanh(np.asarray(query_codes, np.float32))[:, :bits]
  idx = np.asarray(idx)
  out = np.empty(idx.shape, np.int64)
  for lo in range(0, idx.shape[0], chunk):
    rows = idx[lo:lo + chunk]
    b = unpack_codes(np.asarray(db_packed)[rows.reshape(-1)], bits).reshape(rows.shape + (bits,))
    score = np.einsum("qd,qrd->qr", q[lo:lo + chunk], b.astype(np.float32))
    out[lo:lo + chunk] = np.argsort(-score, axis=1, kind="stable")
  return out


def radius_counts(query_packed, db_packed, query_labels, db_labels
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """Per query, how many items (and how many relevant ones) lie at each distance.

  Relevance is ``>= 1`` shared label (int labels: same class).  Returns
  ``(all_counts, rel_counts)``, each ``[q, bits_padded + 1]`` int64 where
  column ``r`` counts items at Hamming distance exactly ``r``.
  """
  qw, dw = _checked_words(query_packed, db_packed)
  ql, dl = label_sets(query_labels, db_labels)
  width = 64 * qw.shape[1] + 1
  all_counts = np.zeros((qw.shape[0], width), np.int64)
  rel_counts = np.zeros((qw.shape[0], width), np.int64)
  _radius_kernel(qw, dw, ql, dl, all_counts, rel_counts,
                 _scratch(qw.shape[0], dw.shape[0], qw.shape[1]))
  return all_counts, rel_counts


def cosine_search(query, db, k: int, chunk: int = 128) -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-``k`` of continuous vectors by cosine similarity (the ranking that codes made
  from them approximate: the ceiling row of an evaluation).

  ``query`` ``[q, d]``, ``db`` ``[n, d]`` float; queries in chunks of ``chunk`` (memory
  ``O(chunk * n)``), chunks spread over the cores.  Returns ``(similarities [q, k] float32,
  indices [q, k] int64)``, sorted by similarity (float32: duplicated vectors need not get
  equal similarities from a matrix product, so their order is not specified).
  """
  from concurrent.futures import ThreadPoolExecutor
  from nsh_jax.codes import l2_normalize
  qn = l2_normalize(np.asarray(query, np.float32))
  dn = l2_normalize(np.asarray(db, np.float32))
  if qn.ndim != 2 or dn.ndim != 2 or qn.shape[1] != dn.shape[1] or not len(dn):
    raise ValueError(f"cosine search needs [q, d] queries and a non-empty [n, d] database; got "
                     f"{qn.shape} and {dn.shape}")
  k = min(int(k), dn.shape[0])

  def one(lo):  # NumPy's matmul and sorts release the GIL: chunks run in parallel
    s = -(qn[lo:lo + chunk] @ dn.T)
    top = np.argpartition(s, k - 1, axis=1)[:, :k] if k < s.shape[1] else None
    part = s if top is None else np.take_along_axis(s, top, 1)
    order = np.argsort(part, axis=1)
    idx = order if top is None else np.take_along_axis(top, order, 1)
    return -np.take_along_axis(s, idx, 1), idx

  with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:
    parts = list(pool.map(one, range(0, qn.shape[0], chunk)))
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]).astype(np.int64))


# ---------------------------------------------------------------------------- index


def save_index(path: str, packed, bits: int, ids=None, labels=None,
               metadata: Optional[dict] = None) -> None:
  """Writes an index (packed codes, ids, optional labels) atomically to ``path`` (.npz).

  A SHA-256 of the arrays is stored beside them so a damaged file is detected on
  load instead of returning wrong neighbours.
  """
  packed = np.asarray(packed, np.uint8)
  if packed.ndim != 2 or packed.shape[1] != (bits + 7) // 8:
    raise ValueError(f"packed codes {packed.shape} do not match bits={bits}")
  ids = np.arange(packed.shape[0], dtype=np.int64) if ids is None else np.asarray(ids)
  if ids.shape[0] != packed.shape[0]:
    raise ValueError(f"{ids.shape[0]} ids for {packed.shape[0]} codes")
  arrays = {"codes": packed, "ids": ids}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape[0] != packed.shape[0]:
      raise ValueError(f"{labels.shape[0]} labels for {packed.shape[0]} codes")
    arrays["labels"] = labels
  header = {"format": INDEX_FORMAT, "bits": int(bits), "count": int(packed.shape[0]),
            "sha256": _digest(arrays), **(metadata or {})}
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save_faiss_index(path: str, packed, bits: int) -> bool:
  """Writes packed codes as a faiss ``IndexBinaryFlat`` (``faiss.read_index_binary``
  reads it; its search gives the distances and ids of :func:`search`, ties by lower id).

  Returns False (nothing written) when faiss is not installed or ``bits`` is not a
  multiple of 8 (faiss's binary indexes need whole bytes).
  """
  try:
    import faiss
  except ImportError:
    return False
  if bits % 8:
    return False
  index = faiss.IndexBinaryFlat(bits)
  index.add(np.ascontiguousarray(packed, np.uint8))
  tmp = f"{path}.tmp-{os.getpid()}"
  faiss.write_index_binary(index, tmp)
  os.replace(tmp, path)
  return True


def load_index(path: str) -> dict:
  """Reads and verifies an index written by :func:`save_index`.

  Returns a dict with ``codes`` (packed uint8), ``ids``, ``bits``, optional
  ``labels`` and the header's metadata.  Raises :class:`CodesFileError` (a
  ``ValueError``) with a one-line reason for a missing, truncated or altered file.
  """
  if not os.path.exists(path):
    raise CodesFileError(f"codes file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {key: f[key] for key in f.files}
  except Exception as e:  # zipfile/np errors vary with the kind of damage
    raise CodesFileError(f"codes file {path} is unreadable or truncated ({type(e).__name__}: {e})")
  if "header" not in data or "codes" not in data or "ids" not in data:
    raise CodesFileError(f"{path} is not an nsh-jax codes file (missing header/codes/ids)")
  try:
    header = json.loads(bytes(data.pop("header")).decode())
  except Exception:
    raise CodesFileError(f"{path} has a corrupt header")
  if header.get("format") != INDEX_FORMAT:
    raise CodesFileError(f"{path} has format {header.get('format')!r}, expected {INDEX_FORMAT!r}")
  if _digest(data) != header.get("sha256"):
    raise CodesFileError(f"{path} failed its checksum: the codes were altered or damaged")
  codes = data["codes"]
  if codes.dtype != np.uint8 or codes.shape != (header["count"], (header["bits"] + 7) // 8):
    raise CodesFileError(f"{path}: codes {codes.dtype}{codes.shape} do not match its header")
  return {**header, **data}


def _digest(arrays: dict) -> str:
  h = hashlib.sha256()
  for key in sorted(arrays):
    a = np.ascontiguousarray(arrays[key])
    h.update(key.encode())
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()
