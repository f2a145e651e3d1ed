"""The tie rule (a seeded, label-agnostic rank per database image), asymmetric re-ranking,
default validation queries and the closing table's verdict."""

import numpy as np
import pytest

from configs import base
from nsh_jax import evaluation, image_index, metrics, protocol, retrieval


def _class_sorted(n_per=60, classes=4, q_per=5, seed=0):
  """A class-sorted labelled set whose 4-bit codes tie massively: code = class pattern with
  one flipped bit for some images."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(classes), n_per)
  patterns = np.sign(rng.normal(size=(classes, 4)))
  codes = patterns[y] * np.where(rng.random((len(y), 4)) < 0.15, -1, 1)
  images = np.zeros((len(y), 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(len(y)) % 256  # distinct rows, to follow them
  images[:, 0, 0, 1] = np.arange(len(y)) // 256
  q_y = np.repeat(np.arange(classes), q_per)
  q_codes = patterns[q_y] * np.where(rng.random((len(q_y), 4)) < 0.15, -1, 1)
  return (images, y), (np.zeros((len(q_y), 2, 2, 3), np.uint8), q_y), codes, q_codes


def _splits(shuffle):
  ds = base.get_config().dataset
  ds.shuffle_database, ds.val_queries_per_class, ds.split_seed = shuffle, 0, 3
  train, test, codes, q_codes = _class_sorted()
  s = protocol.make_splits(ds, train, test, 4)
  row = s.db_images[:, 0, 0, 0].astype(int) + 256 * s.db_images[:, 0, 0, 1].astype(int)
  return s, codes[row], q_codes


def test_a_class_sorted_database_scores_as_a_shuffled_one_under_the_tie_rule():
  stored, sc, q = _splits(shuffle=False)  # class-sorted rows
  shuffled, hc, _ = _splits(shuffle=True)
  assert not np.array_equal(stored.db_labels, shuffled.db_labels)
  np.testing.assert_array_equal(shuffled.db_keys, np.arange(len(shuffled.db_keys)))
  for k in (10, 50, None):
    a = metrics.mean_average_precision(q, sc, stored.query_labels, stored.db_labels, k,
                                       tie_keys=stored.db_keys)
    b = metrics.mean_average_precision(q, hc, shuffled.query_labels, shuffled.db_labels, k,
                                       tie_keys=shuffled.db_keys)
    assert a == b
  # without the rule, position breaks the ties: the class-sorted order scores otherwise
  plain = metrics.mean_average_precision(q, sc, stored.query_labels, stored.db_labels, 10)
  assert plain != metrics.mean_average_precision(q, sc, stored.query_labels, stored.db_labels,
                                                 10, tie_keys=stored.db_keys)
  r1 = metrics.evaluate_codes(q, sc, stored.query_labels, stored.db_labels, 10,
                              tie_keys=stored.db_keys)
  r2 = metrics.evaluate_codes(q, hc, shuffled.query_labels, shuffled.db_labels, 10,
                              tie_keys=shuffled.db_keys)
  assert r1["map"] == r2["map"] and r1["precision_at_n"] == r2["precision_at_n"]


def test_search_breaks_ties_by_the_keys():
  rng = np.random.default_rng(1)
  db = retrieval.pack_codes(np.sign(rng.normal(size=(40, 8))))
  q = retrieval.pack_codes(np.sign(rng.normal(size=(6, 8))))
  keys = rng.permutation(40)
  dist, idx = retrieval.search(q, db, 40, tie_keys=keys)
  full = retrieval.hamming_distance(retrieval.unpack_codes(q, 8), retrieval.unpack_codes(db, 8))
  want = np.lexsort((np.broadcast_to(keys, full.shape), full), axis=1)
  np.testing.assert_array_equal(idx, want)
  np.testing.assert_array_equal(dist, np.take_along_axis(full, want, 1))


def _brute_asymmetric(qr, db, k_ham, keys):
  """Per query: the Hamming top-R by (distance, key), then sorted by <tanh(q), b> (stable)."""
  b = np.where(db >= 0, 1.0, -1.0)
  out = []
  for i in range(len(qr)):
    dist = (b.shape[1] - b @ np.where(qr[i] >= 0, 1.0, -1.0)) / 2
    short = np.lexsort((keys, dist))[:k_ham]
    score = b[short] @ np.tanh(qr[i].astype(np.float64))
    out.append(short[np.argsort(-score, kind="stable")])
  return np.stack(out)


def test_asymmetric_ranking_equals_brute_force():
  rng = np.random.default_rng(2)
  db = rng.normal(size=(300, 16))
  db[:50] = db[50:100]  # duplicated codes: Hamming ties and score ties
  qr = rng.normal(size=(12, 16)) * 2
  keys = rng.permutation(300)
  dist, idx = retrieval.search(retrieval.pack_codes(qr), retrieval.pack_codes(db), 60, keys)
  order = retrieval.rerank(qr, retrieval.pack_codes(db), idx, 16)
  np.testing.assert_array_equal(np.take_along_axis(idx, order, 1),
                                _brute_asymmetric(qr, db, 60, keys))
  # mAP through the metric: the first R re-ranked, the rest in Hamming order
  ql, dl = rng.integers(0, 3, 12), rng.integers(0, 3, 300)
  for k, r in ((30, 60), (100, 60)):
    ranked = _brute_asymmetric(qr, db, r, keys)
    rest = [np.lexsort((keys, (16 - np.where(db >= 0, 1, -1) @ np.where(qr[i] >= 0, 1, -1)) / 2))
            for i in range(12)]
    full = [np.concatenate([ranked[i], [j for j in rest[i] if j not in set(ranked[i])]])[:k]
            for i in range(12)]
    rel = np.stack([dl[f] == ql[i] for i, f in enumerate(full)]).astype(float)
    prec = np.cumsum(rel, 1) / np.arange(1, k + 1)
    want = np.mean(np.where(rel.sum(1) > 0, (prec * rel).sum(1) / np.maximum(rel.sum(1), 1), 0))
    got = metrics.mean_average_precision(qr, db, ql, dl, k, tie_keys=keys, rerank=r)
    assert got == pytest.approx(want, abs=1e-12)


def test_photo_index_ties_follow_seeded_name_keys_not_file_order():
  names = [f"deer/{i:04d}.jpg" for i in range(30)]
  keys = image_index.tie_keys(names)
  assert len(set(keys.tolist())) == 30 and not np.all(np.diff(keys.astype(np.float64)) > 0)
  np.testing.assert_array_equal(image_index.tie_keys(names[::-1])[::-1], keys)  # order-free
  assert not np.array_equal(image_index.tie_keys(names, seed=1), keys)


@pytest.mark.parametrize("multi", [False, True])
def test_validation_by_default_takes_a_tenth_out_of_training(multi):
  ds = base.get_config().dataset
  assert ds.val_queries_per_class == -1 and ds.val_queries == -1
  rng = np.random.default_rng(0)
  n = 400
  y = (rng.random((n, 5)) < 0.3).astype(np.int32) if multi else np.repeat(np.arange(4), n // 4)
  if multi:
    y[np.arange(n), rng.integers(0, 5, n)] = 1
  images = rng.integers(0, 255, (n, 2, 2, 3)).astype(np.uint8)
  s = protocol.make_splits(ds, (images, y), (images[:10], y[:10]), 5 if multi else 4)
  assert len(s.val_rows) == 40 and len(s.train_rows) == 360  # every database image trained
  assert not set(s.val_rows) & set(s.train_rows)
  if not multi:
    np.testing.assert_array_equal(np.bincount(s.db_labels[s.val_rows]), [10] * 4)
  few = np.concatenate([np.arange(c * 100, c * 100 + 8) for c in range(4)])  # 8 per class
  tiny = protocol.make_splits(ds, (images[few], y[few]), (images[:4], y[:4]), 5 if multi else 4)
  assert (tiny.val_rows is None) == (not multi)  # single-label: 8 // 10 = 0 per class
  if multi:
    assert len(tiny.val_rows) == 3  # a tenth of 32


def test_verdict_names_a_baseline_above_the_model_on_validation():
  c = base.get_config()
  c.model.bit_list = (16, 32)
  result = {"validation": {16: {"map": 0.5}, 32: {"map": 0.6}},
            "baselines_validation": {"itq-pixels": {16: 0.55, 32: 0.58},
                                     "lsh-pixels": {16: 0.3, 32: 0.4}}}
  lines = evaluation.verdict(c, result)
  assert len(lines) == 1 and lines[0].startswith(
      "ITQ on pixels is above the model on validation at 16 bits (0.5500 vs 0.5000)")
  result["baselines_validation"]["itq-pixels"] = {16: 0.4, 32: 0.5}
  assert evaluation.verdict(c, result)[0].startswith("best on validation at every length: "
                                                     "the model")


def test_photo_index_search_ranks_equal_distances_by_the_keys(tmp_path):
  """Twelve identical photos: every one at Hamming distance 0 from the query; the hits come
  in tie-key order, not in file order."""
  from PIL import Image
  folder = tmp_path / "photos"
  folder.mkdir()
  img = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
  names = [f"img{i:02d}.png" for i in range(12)]
  for n in names:
    Image.fromarray(img).save(folder / n)
  encode = lambda x: x.reshape(len(x), -1)[:, :16].astype(np.float32) - 127.5
  out = str(tmp_path / "idx")
  image_index.build(str(folder), out, encode, lambda e, b: e[:, :b], [16], "m", 8, "sign",
                    log=lambda *a: None)
  hits = image_index.search(out, str(folder / "img03.png"), encode, lambda e, b: e[:, :b], 16,
                            "m", k=12, log=lambda *a: None)["queries"][0]["results"]
  assert [h["distance"] for h in hits] == [0] * 12
  keys = dict(zip(names, image_index.tie_keys(names)))
  assert [h["file"] for h in hits] == sorted(names, key=keys.get) != names


def test_memorisation_check_matches_a_per_query_reference():
  """Training images as queries, each against the database without the drawn queries (none
  retrieves itself), ties by the protocol's keys: equal to the per-query loop; a model that
  memorised (its training rows' codes apart from everything else's) shows a gap; no check
  without validation queries."""
  from test_metrics_retrieval import ref_ap
  ds = base.get_config().dataset
  rng = np.random.default_rng(5)
  n = 400
  y = np.repeat(np.arange(4), n // 4)
  images = rng.integers(0, 255, (n, 2, 2, 3)).astype(np.uint8)
  s = protocol.make_splits(ds, (images, y), (images[:10], y[:10]), 4)
  c = base.get_config()
  c.eval.top_k = 50
  rows = protocol.training_query_rows(s, c.seed)
  assert len(rows) == len(s.val_rows) == 40 and set(rows) <= set(s.train_rows)
  keep = np.setdiff1d(np.arange(n), rows)
  db = rng.normal(size=(n, 8))
  out = evaluation.memorisation(c, s, {8: (None, db)}, {8: 0.25}, log=lambda *a: None)
  want = ref_ap(db[rows], db[keep], s.db_labels[rows], s.db_labels[keep], 50, s.db_keys[keep])
  assert out[8]["training"] == pytest.approx(want, abs=1e-6)
  assert out[8]["gap"] == pytest.approx(want - 0.25, abs=1e-6)
  # Memorised: every training image's code is its class pattern, the rest are noise.
  patterns = np.sign(rng.normal(size=(4, 8)))
  db[s.train_rows] = patterns[s.db_labels[s.train_rows]]
  memorised = evaluation.memorisation(c, s, {8: (None, db)}, {8: 0.25}, log=lambda *a: None)
  assert memorised[8]["training"] == pytest.approx(1.0) and memorised[8]["gap"] > 0.7
  ds.val_queries_per_class = ds.val_queries = 0
  assert evaluation.memorisation(c, protocol.make_splits(ds, (images, y), (images[:10], y[:10]),
                                                         4), {8: (None, db)}, {8: 0.25}) is None


def test_reference_codes_of_a_trained_backbone_are_itq_and_lsh_of_its_own_features():
  """``baselines(..., trained=F)``: ITQ/LSH fitted on the trained backbone's training-split
  features, scored like every row (ties by the protocol's keys), beside the frozen features';
  the same arrays under both names give the same numbers."""
  from test_metrics_retrieval import ref_ap
  from nsh_jax import householder
  from nsh_jax.encoder_input import Features
  ds = base.get_config().dataset
  rng = np.random.default_rng(7)
  n, q = 300, 20
  y = np.repeat(np.arange(3), n // 3)
  images = rng.integers(0, 255, (n, 2, 2, 3)).astype(np.uint8)
  s = protocol.make_splits(ds, (images, y), (images[:q], y[:q]), 3)
  c = base.get_config()
  c.model.bit_list, c.eval.top_k = (8,), 30
  centers = rng.normal(size=(3, 12))
  make = lambda labels, noise: centers[labels] + noise * rng.normal(size=(len(labels), 12))
  frozen = Features(make(s.train_labels, 3.0), make(s.query_labels, 3.0), make(s.db_labels, 3.0))
  trained = Features(make(s.train_labels, 0.5), make(s.query_labels, 0.5), make(s.db_labels, 0.5))
  out = evaluation.baselines(c, s, frozen, log=lambda *a: None, trained=trained)
  assert {"itq-features", "itq-trained backbone", "lsh-trained backbone"} <= set(out)
  fit = householder.fit("itq", trained.train, bits=8, seed=c.seed)
  want = ref_ap(householder.apply(fit, trained.query), householder.apply(fit, trained.database),
                s.query_labels, s.db_labels, 30, s.db_keys)
  assert out["itq-trained backbone"][8]["map"] == pytest.approx(want, abs=1e-6)
  assert out["itq-trained backbone"][8]["map"] > out["itq-features"][8]["map"]  # less noise
  same = evaluation.baselines(c, s, frozen, log=lambda *a: None, trained=frozen)
  assert same["itq-trained backbone"][8]["map"] == same["itq-features"][8]["map"]
  assert same["itq-trained backbone"][8]["validation"] == same["itq-features"][8]["validation"]
