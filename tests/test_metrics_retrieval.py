"""Metrics and search against independent NumPy implementations of the definitions."""

import numpy as np
import pytest

from nsh_jax import metrics, retrieval


def ref_ap(q, x, ql, dl, k, keys=None):
  """Per-query loop: Hamming via +-1 dot, ties by ``keys`` (default: by index), AP@k."""
  qs, xs = np.where(q >= 0, 1, -1), np.where(x >= 0, 1, -1)
  keys = np.arange(len(x)) if keys is None else np.asarray(keys)
  aps = []
  for i in range(len(q)):
    dist = (q.shape[1] - xs @ qs[i]) // 2
    order = np.lexsort((keys, dist))[:k]
    if dl.ndim == 1:
      rel = (dl[order] == ql[i]).astype(float)
    else:
      rel = ((dl[order] @ ql[i]) > 0).astype(float)
    if rel.sum() == 0:
      aps.append(0.0)
      continue
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    aps.append(float((prec * rel).sum() / rel.sum()))
  return float(np.mean(aps))


@pytest.mark.parametrize("bits,k", [(8, 5), (16, 50), (32, None), (12, 10_000)])
def test_map_matches_reference_with_ties(bits, k):
  rng = np.random.default_rng(bits)
  x = rng.normal(size=(300, bits))
  q = rng.normal(size=(40, bits))
  dl = rng.integers(0, 5, 300)
  ql = rng.integers(0, 7, 40)  # classes 5, 6 have no relevant items: AP 0
  x[:30] = x[30:60]  # duplicated codes: exact ties
  got = metrics.mean_average_precision(q, x, ql, dl, top_k=k)
  want = ref_ap(q, x, ql, dl, 300 if k is None else min(k, 300))
  assert got == pytest.approx(want, abs=1e-6)


def test_map_multilabel_and_perfect():
  rng = np.random.default_rng(0)
  dl = (rng.random((200, 6)) < 0.3).astype(np.int32)
  ql = (rng.random((20, 6)) < 0.3).astype(np.int32)
  x, q = rng.normal(size=(200, 16)), rng.normal(size=(20, 16))
  assert metrics.mean_average_precision(q, x, ql, dl, 50) == pytest.approx(
      ref_ap(q, x, ql, dl, 50), abs=1e-6)
  # Codes equal to class codes: every relevant item at distance 0, first: mAP = 1.
  labels = rng.integers(0, 4, 100)
  codes = np.sign(rng.normal(size=(4, 16)))[labels]
  assert metrics.mean_average_precision(codes[:10], codes, labels[:10], labels) == 1.0


def test_multilabel_map_with_ties_matches_numpy_and_sklearn():
  """Multi-hot labels (relevant: at least one shared label), 6-bit codes so that nearly every
  distance is a tie, seeded tie keys: mAP@all against the NumPy loop and against
  scikit-learn's average_precision_score on the same strict order (distance, then key)."""
  from sklearn.metrics import average_precision_score
  rng = np.random.default_rng(7)
  n, bits = 400, 6
  dl = (rng.random((n, 5)) < 0.3).astype(np.int32)
  dl[dl.sum(1) == 0, 0] = 1  # every image labelled
  ql = dl[rng.choice(n, 25, replace=False)]  # each query has relevant items
  x, q = rng.normal(size=(n, bits)), rng.normal(size=(25, bits))
  keys = rng.permutation(n)
  got = metrics.mean_average_precision(q, x, ql, dl, None, tie_keys=keys)
  assert got == pytest.approx(ref_ap(q, x, ql, dl, n, keys), abs=1e-6)
  dist = (np.sign(q)[:, None, :] != np.sign(x)[None, :, :]).sum(-1)
  score = -(dist * n + keys[None, :])  # one strict order: Hamming, then the key
  rel = (ql @ dl.T) > 0
  want = np.mean([average_precision_score(rel[i], score[i]) for i in range(len(q))])
  assert got == pytest.approx(want, abs=1e-6)
  # Depth matters: mAP@20 reads the top 20 only (the NumPy loop agrees).
  assert metrics.mean_average_precision(q, x, ql, dl, 20, tie_keys=keys) == pytest.approx(
      ref_ap(q, x, ql, dl, 20, keys), abs=1e-6)


def test_precision_recall_and_p_at_h2():
  rng = np.random.default_rng(1)
  x, q = np.sign(rng.normal(size=(150, 8))), np.sign(rng.normal(size=(12, 8)))
  dl, ql = rng.integers(0, 3, 150), rng.integers(0, 3, 12)
  dist = (q[:, None, :] != x[None, :, :]).sum(-1)
  rel = ql[:, None] == dl[None, :]
  pr = metrics.precision_recall_by_radius(q, x, ql, dl)
  for r in range(9):
    ret = dist <= r
    tp = (ret & rel).sum(1)
    prec = np.where(ret.sum(1) > 0, tp / np.maximum(ret.sum(1), 1), 0).mean()
    rec = (tp / rel.sum(1)).mean()
    assert pr["precision"][r] == pytest.approx(prec)
    assert pr["recall"][r] == pytest.approx(rec)
  assert metrics.precision_within_radius(q, x, ql, dl, 2) == pytest.approx(pr["precision"][2])
  pn = metrics.precision_at_n(q, x, ql, dl, ns=(1, 10, 150))
  order = np.argsort(dist, axis=1, kind="stable")
  for n in (1, 10, 150):
    assert pn[n] == pytest.approx(np.take_along_axis(rel, order, 1)[:, :n].mean())


def test_packed_hamming_equals_pm1_formula():
  rng = np.random.default_rng(2)
  for bits in (1, 7, 8, 33, 64, 100):
    a, b = rng.normal(size=(9, bits)), rng.normal(size=(11, bits))
    sa, sb = np.where(a >= 0, 1, -1), np.where(b >= 0, 1, -1)
    np.testing.assert_array_equal(retrieval.hamming_distance(a, b), (bits - sa @ sb.T) // 2)
    np.testing.assert_array_equal(
        retrieval.unpack_codes(retrieval.pack_codes(a), bits), sa)


@pytest.mark.parametrize("bits,k", [(16, 25), (16, 1), (100, 300), (150, 40), (200, 5000), (8, 10_000)])
def test_search_equals_bruteforce(bits, k):
  rng = np.random.default_rng(3)
  db = np.sign(rng.normal(size=(5000, bits)))
  db[100:200] = db[:100]  # ties
  q = np.sign(rng.normal(size=(70, bits)))
  q[:5] = db[150:155]  # distance-0 hits that tie with earlier duplicates
  dist, idx = retrieval.search(retrieval.pack_codes(q), retrieval.pack_codes(db), k)
  full = (bits - q @ db.T) // 2
  order = np.argsort(full, axis=1, kind="stable")[:, :min(k, 5000)]
  np.testing.assert_array_equal(idx, order)
  np.testing.assert_array_equal(dist, np.take_along_axis(full, order, 1))


def test_radius_counts_multilabel_and_arbitrary_int_labels():
  rng = np.random.default_rng(5)
  x, q = np.sign(rng.normal(size=(400, 70))), np.sign(rng.normal(size=(15, 70)))
  dist = (q[:, None, :] != x[None, :, :]).sum(-1)
  for ql, dl in [(rng.integers(-3, 2, 15) * 1000, rng.integers(-3, 2, 400) * 1000),
                 ((rng.random((15, 70)) < 0.05).astype(np.int8),
                  (rng.random((400, 70)) < 0.05).astype(np.int8))]:
    rel = (ql[:, None] == dl[None, :]) if ql.ndim == 1 else (ql @ dl.T) > 0
    all_c, rel_c = retrieval.radius_counts(retrieval.pack_codes(q), retrieval.pack_codes(x), ql, dl)
    for r in range(71):
      np.testing.assert_array_equal(all_c[:, r], (dist == r).sum(1))
      np.testing.assert_array_equal(rel_c[:, r], ((dist == r) & rel).sum(1))
    assert all_c[:, 71:].sum() == 0


def test_bad_inputs_raise_value_errors():
  with pytest.raises(ValueError, match="equal bits"):
    metrics.mean_average_precision(np.zeros((3, 8)), np.zeros((5, 16)), np.zeros(3), np.zeros(5))
  with pytest.raises(ValueError, match="one row per code"):
    metrics.mean_average_precision(np.zeros((3, 8)), np.zeros((5, 8)), np.zeros(4), np.zeros(5))
  with pytest.raises(ValueError, match="same code length"):
    retrieval.search(np.zeros((2, 2), np.uint8), np.zeros((5, 3), np.uint8), 1)


def test_index_roundtrip_and_corruption(tmp_path):
  rng = np.random.default_rng(4)
  packed = retrieval.pack_codes(rng.normal(size=(50, 24)))
  path = str(tmp_path / "db.npz")
  retrieval.save_index(path, packed, 24, ids=np.arange(100, 150), labels=np.arange(50) % 3)
  idx = retrieval.load_index(path)
  np.testing.assert_array_equal(idx["codes"], packed)
  assert idx["bits"] == 24 and idx["ids"][0] == 100
  raw = open(path, "rb").read()
  with open(path, "wb") as f:  # truncated
    f.write(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match="unreadable|truncated"):
    retrieval.load_index(path)
  # A file with the right arrays but a garbage header is refused.
  np.savez(path, header=np.zeros(1, np.uint8), codes=packed, ids=np.arange(50))
  with pytest.raises(ValueError):
    retrieval.load_index(path)
  # Flip bytes inside the stored codes: the checksum catches it.
  retrieval.save_index(path, packed, 24)
  with np.load(path) as f:
    parts = {k: f[k] for k in f.files}
  parts["codes"] = parts["codes"].copy()
  parts["codes"][0, 0] ^= 0xFF
  np.savez(path, **parts)
  with pytest.raises(ValueError, match="checksum"):
    retrieval.load_index(path)
  with pytest.raises(ValueError, match="not found"):
    retrieval.load_index(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("bits", [8, 16, 64])
def test_faiss_export_searches_like_ours(tmp_path, bits):
  """The exported IndexBinaryFlat gives retrieval.search's distances and ids (ties included)."""
  faiss = pytest.importorskip("faiss")
  rng = np.random.default_rng(bits)
  db = retrieval.pack_codes(rng.normal(size=(3000, bits)))
  q = retrieval.pack_codes(rng.normal(size=(200, bits)))
  path = str(tmp_path / "db.faiss")
  assert retrieval.save_faiss_index(path, db, bits)
  index = faiss.read_index_binary(path)
  dist, ids = index.search(q, 100)
  want_d, want_i = retrieval.search(q, db, 100)
  np.testing.assert_array_equal(dist, want_d)
  np.testing.assert_array_equal(ids, want_i)
  assert not retrieval.save_faiss_index(str(tmp_path / "odd.faiss"), db[:, :1], 7)


def _ref_cosine_ap(q, x, ql, dl, k):
  """Per-query loop: cosine similarity in float64, descending sort, AP@k."""
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  aps = []
  for i in range(len(q)):
    order = np.argsort(-(xn @ qn[i]), kind="stable")[:k]
    rel = ((dl[order] @ ql[i]) > 0 if dl.ndim == 2 else dl[order] == ql[i]).astype(float)
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    aps.append(float((prec * rel).sum() / rel.sum()) if rel.sum() else 0.0)
  return float(np.mean(aps))


@pytest.mark.parametrize("multi", [False, True])
def test_cosine_map_the_ceiling_row_matches_brute_force_at_every_depth(multi):
  rng = np.random.default_rng(3)
  x, q = rng.normal(size=(250, 12)), rng.normal(size=(30, 12))
  if multi:
    dl, ql = (rng.random((250, 5)) < 0.3).astype(np.int32), (rng.random((30, 5)) < 0.3).astype(np.int32)
  else:
    dl, ql = rng.integers(0, 4, 250), rng.integers(0, 5, 30)
  got = metrics.cosine_map(q, x, ql, dl, depths=(10, 100, None))
  for d, k in ((10, 10), (100, 100), (None, 250)):
    assert got[d] == pytest.approx(_ref_cosine_ap(q, x, ql, dl, k), abs=1e-9)
