"""Binary codes for retrieval: sign, bit packing, Hamming top-k, and an on-disk index.

Codes travel as packed bits: ``[n, ceil(d/8)]`` uint8, most significant bit
first (``numpy.packbits`` order, the layout ``faiss.IndexBinary*`` takes), bit
``1`` for a ``+1`` code.  Search packs those bytes into uint32 words and
computes Hamming distance as ``popcount(q XOR x)``; ranking is by distance,
ties broken by database order (lower index first) -- the convention every
metric in :mod:`nsh_jax.metrics` uses too.

This module imports nothing from training.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

INDEX_FORMAT = "nsh-jax-index/1"


def binarize(x):
  """``sign(x)`` with ``0 -> +1``, as int8 (NumPy in, NumPy out; JAX in, JAX out)."""
  if isinstance(x, np.ndarray):
    return np.where(x >= 0, 1, -1).astype(np.int8)
  return jnp.where(x >= 0, 1, -1).astype(jnp.int8)


def pack_codes(codes) -> np.ndarray:
  """Real or +-1 codes ``[n, d]`` -> packed bits ``[n, ceil(d/8)]`` uint8 (``x >= 0`` -> 1)."""
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D [n, bits]; got shape {codes.shape}")
  return np.packbits(codes >= 0, axis=1)


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
  """uint8 ``[n, B]`` -> uint32 ``[n, ceil(B/4)]`` (zero padded) for popcount."""
  packed = np.asarray(packed, np.uint8)
  n, nbytes = packed.shape
  pad = (-nbytes) % 4
  if pad:
    packed = np.concatenate([packed, np.zeros((n, pad), np.uint8)], axis=1)
  return np.ascontiguousarray(packed).view(">u4").astype(np.uint32)


def hamming_distance_words(query_words: jax.Array, db_words: jax.Array) -> jax.Array:
  """Hamming distances ``[q, n]`` int32 between uint32 word codes ``[q, w]``, ``[n, w]``."""
  x = jnp.bitwise_xor(query_words[:, None, :], db_words[None, :, :])
  return jnp.sum(jax.lax.population_count(x).astype(jnp.int32), axis=-1)


def hamming_distance(query_codes, db_codes) -> np.ndarray:
  """Hamming distances ``[q, n]`` between real/+-1 codes (signs taken), via packed bits."""
  q = to_words(pack_codes(query_codes))
  x = to_words(pack_codes(db_codes))
  return np.asarray(hamming_distance_words(jnp.asarray(q), jnp.asarray(x)))


@jax.jit
def _distance_matrix(query_words, db_words):
  """Hamming distances as the narrowest unsigned type that holds them."""
  dist = hamming_distance_words(query_words, db_words)
  bits = query_words.shape[1] * 32
  return dist.astype(jnp.uint8 if bits < 256 else jnp.uint16)


def _stable_rank(dist: np.ndarray, k: int) -> np.ndarray:
  """Indices of each row's ``k`` smallest distances, ties by lower index.

  Distances are small unsigned ints, so NumPy's stable sort is a radix sort:
  O(n) per row and exact.  (XLA's CPU ``top_k``/``sort`` are comparison
  sorts and measured 6-35x slower here.)  Rows are split over threads; NumPy
  releases the GIL while sorting.
  """
  workers = min(os.cpu_count() or 1, dist.shape[0])
  if workers <= 1:
    return np.argsort(dist, axis=1, kind="stable")[:, :k]
  parts = np.array_split(np.arange(dist.shape[0]), workers)
  out = np.empty((dist.shape[0], k), np.int64)

  def work(rows):
    out[rows] = np.argsort(dist[rows], axis=1, kind="stable")[:, :k]

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(work, [slice(p[0], p[-1] + 1) for p in parts if len(p)]))
  return out


def search(query_packed, db_packed, k: int, *,
           query_chunk: int = 64) -> Tuple[np.ndarray, np.ndarray]:
  """Exact Hamming k-nearest neighbours of packed queries in a packed database.

  Args:
    query_packed: ``[q, B]`` uint8 packed codes.
    db_packed: ``[n, B]`` uint8 packed codes (same ``B``).
    k: neighbours per query (clipped to ``n``).
    query_chunk: queries per step; memory is ``query_chunk * n`` bytes.

  Returns:
    ``(distances [q, k] int32, indices [q, k] int64)``, sorted by distance then
    database index.
  """
  query_packed = np.asarray(query_packed)
  db_packed = np.asarray(db_packed)
  for name, arr in (("query codes", query_packed), ("database codes", db_packed)):
    if arr.ndim != 2 or arr.dtype != np.uint8:
      raise ValueError(f"{name} must be packed 2-D uint8; got {arr.dtype} {arr.shape}")
  if query_packed.shape[1] != db_packed.shape[1]:
    raise ValueError(f"query codes have {query_packed.shape[1]} bytes per row, database "
                     f"codes {db_packed.shape[1]}: they must have the same code length")
  n = db_packed.shape[0]
  if n == 0:
    raise ValueError("the database is empty")
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}")
  k = min(int(k), n)
  qw, dw = to_words(query_packed), jnp.asarray(to_words(db_packed))
  nq = qw.shape[0]
  dists = np.empty((nq, k), np.int32)
  idxs = np.empty((nq, k), np.int64)
  for start in range(0, nq, query_chunk):
    q = qw[start:start + query_chunk]
    rows = q.shape[0]
    if rows < query_chunk and nq > query_chunk:  # keep one compiled shape
      q = np.concatenate([q, np.zeros((query_chunk - rows, q.shape[1]), q.dtype)])
    dist = np.asarray(_distance_matrix(jnp.asarray(q), dw))[:rows]
    order = _stable_rank(dist, k)
    idxs[start:start + rows] = order
    dists[start:start + rows] = np.take_along_axis(dist, order, axis=1)
  return dists, idxs


# ---------------------------------------------------------------------------- index


class IndexError_(ValueError):
  """A codes/index file is missing, corrupt or inconsistent."""


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


def load_index(path: str) -> dict:
  """Reads and verifies an index written by :func:`save_index`.

  Returns a dict with ``codes`` (packed uint8), ``ids``, ``bits``, optional
  ``labels`` and the header's metadata.  Raises :class:`IndexError_` (a
  ``ValueError``) with a one-line reason for a missing, truncated or altered file.
  """
  if not os.path.exists(path):
    raise IndexError_(f"codes file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {key: f[key] for key in f.files}
  except Exception as e:  # zipfile/np errors vary with the kind of damage
    raise IndexError_(f"codes file {path} is unreadable or truncated ({type(e).__name__}: {e})")
  if "header" not in data or "codes" not in data or "ids" not in data:
    raise IndexError_(f"{path} is not an nsh-jax codes file (missing header/codes/ids)")
  try:
    header = json.loads(bytes(data.pop("header")).decode())
  except Exception:
    raise IndexError_(f"{path} has a corrupt header")
  if header.get("format") != INDEX_FORMAT:
    raise IndexError_(f"{path} has format {header.get('format')!r}, expected {INDEX_FORMAT!r}")
  if _digest(data) != header.get("sha256"):
    raise IndexError_(f"{path} failed its checksum: the codes were altered or damaged")
  codes = data["codes"]
  if codes.dtype != np.uint8 or codes.shape != (header["count"], (header["bits"] + 7) // 8):
    raise IndexError_(f"{path}: codes {codes.dtype}{codes.shape} do not match its header")
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
