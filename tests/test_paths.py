"""Paths no test used to run (issue #31), each against an independent reference or a known answer."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import pytest

from configs import base, cifar_prefix_pretrained
from nsh_jax import (augment, feature_cache, input_pipeline, losses, metrics, protocol, sorting,
                     state as state_lib)
from test_metrics_retrieval import ref_ap
from test_sorted_nce import random_problem
from nsh_jax import encoder_input


# ------------------------------------------------------- evaluate_codes, the reported numbers


def _ref_report(q, x, ql, dl, k, ns):
  """Brute force of every number evaluate_codes returns (ties by database index)."""
  qs, xs = np.where(q >= 0, 1, -1), np.where(x >= 0, 1, -1)
  dist = (q.shape[1] - qs @ xs.T) // 2
  rel = ql[:, None] == dl[None, :]
  order = np.argsort(dist, axis=1, kind="stable")
  ranked = np.take_along_axis(rel, order, 1)
  p_at_n = {n: float(ranked[:, :n].mean()) for n in ns}
  within = dist <= 2
  p_h2 = float(np.mean([rel[i, within[i]].mean() if within[i].any() else 0.0
                        for i in range(len(q))]))
  return ref_ap(q, x, ql, dl, k), p_at_n, p_h2


@pytest.mark.parametrize("bits,k", [(8, 20), (16, None)])
def test_evaluate_codes_matches_brute_force(bits, k):
  rng = np.random.default_rng(bits)
  x, q = rng.normal(size=(120, bits)), rng.normal(size=(15, bits))
  x[:20] = x[20:40]  # exact ties
  dl, ql = rng.integers(0, 4, 120), rng.integers(0, 5, 15)
  r = metrics.evaluate_codes(q, x, ql, dl, k, ns=(1, 10, 50))
  want_map, want_pn, want_h2 = _ref_report(q, x, ql, dl, 120 if k is None else k, (1, 10, 50))
  assert r["map"] == pytest.approx(want_map, abs=1e-6)
  assert r["p_at_h2"] == pytest.approx(want_h2, abs=1e-6)
  for n, v in want_pn.items():
    assert r["precision_at_n"][n] == pytest.approx(v, abs=1e-6)
  assert r["map"] == metrics.mean_average_precision(q, x, ql, dl, k)
  assert r["p_at_h2"] == metrics.precision_within_radius(q, x, ql, dl, 2)


# ------------------------------------------------------------------ supervised losses


def test_dpsh_loss_matches_its_formula():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(6, 8)).astype(np.float32)
  y = np.array([0, 1, 0, 2, 1, 0])
  s = (y[:, None] == y[None, :]).astype(np.float64)
  theta = 0.5 * u.astype(np.float64) @ u.T.astype(np.float64)
  want = np.mean(np.log1p(np.exp(theta)) - s * theta)
  assert float(losses.dpsh_loss(jnp.asarray(u), jnp.asarray(y))) == pytest.approx(want, rel=1e-4)


def test_csq_loss_single_and_multi_label_targets():
  rng = np.random.default_rng(1)
  u = np.tanh(rng.normal(size=(5, 8)))
  centers = np.sign(rng.normal(size=(3, 8)))
  centers[centers == 0] = 1

  def ref(targets):
    p = np.clip((u + 1) / 2, 1e-6, 1 - 1e-6)
    t = (targets + 1) / 2
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    return bce + 1e-4 * np.mean((np.abs(u) - 1) ** 2)

  y = np.array([0, 2, 1, 1, 0])
  got = float(losses.csq_loss(jnp.asarray(u), jnp.asarray(y), jnp.asarray(centers)))
  assert got == pytest.approx(ref(centers[y]), rel=1e-5)
  multi = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1], [1, 1, 0]])
  s = multi @ centers  # target: the sign of the sum of the item's centres (+1 at 0)
  got = float(losses.csq_loss(jnp.asarray(u), jnp.asarray(multi), jnp.asarray(centers)))
  assert got == pytest.approx(ref(np.where(s >= 0, 1.0, -1.0)), rel=1e-5)


def test_dsh_loss_matches_its_formula_and_margin():
  rng = np.random.default_rng(2)
  u = rng.normal(size=(6, 4))
  y = np.array([0, 0, 1, 1, 2, 0])
  d = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
  s = (y[:, None] == y[None, :]).astype(float)
  for m in (None, 3.0):
    margin = 8.0 if m is None else m
    want = np.mean(0.5 * s * d + 0.5 * (1 - s) * np.maximum(margin - d, 0)) + 0.01 * np.mean(
        np.abs(np.abs(u) - 1))
    got = float(losses.dsh_loss(jnp.asarray(u, jnp.float32), jnp.asarray(y), margin=m))
    assert got == pytest.approx(want, rel=1e-4)


def test_label_similarity_multi_hot_and_hadamard_centres():
  a = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(losses.label_similarity(a, a)),
                                [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
  c = np.asarray(losses.hadamard_centers(10, 16))
  assert c.shape == (10, 16) and set(np.unique(c)) <= {-1.0, 1.0}
  d = (16 - c @ c.T) / 2  # Hamming distances between centres: Hadamard rows are 8 apart
  off = d[~np.eye(10, dtype=bool)]
  assert off.min() >= 8


# ------------------------------------------------------------ SortedNCE's XLA-sort path


@pytest.mark.parametrize("ties", [False, True])
def test_xla_sort_path_equals_the_sorting_network(monkeypatch, ties):
  """GPU/TPU (and CPU with n > 4096) sort with XLA; values and tie-correct gradients
  must equal the sorting network's."""
  rng = np.random.default_rng(7)
  a, b, za, zb = (jnp.asarray(v, jnp.float32) for v in random_problem(rng, 48, 16, 8, ties))
  loss = lambda a, b, za, zb: losses.sorted_nce(a, b, za, zb, num_positives=3,
                                                sort_temperature=0.1)
  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  v_net, g_net = loss(a, b, za, zb), grad(a, b, za, zb)
  calls = []
  real = jnp.argsort
  monkeypatch.setattr(sorting, "_NETWORK_MAX_N", 0)
  monkeypatch.setattr(sorting.jnp, "argsort", lambda *x, **k: calls.append(1) or real(*x, **k))
  v_xla, g_xla = loss(a, b, za, zb), grad(a, b, za, zb)
  assert calls, "the XLA sort path did not run"
  np.testing.assert_allclose(v_xla, v_net, rtol=1e-6)
  for x, y in zip(g_xla, g_net):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_ott_sorter_ranks_largest_first():
  scores = jnp.asarray([0.1, 0.9, 0.5, -0.3, 0.7])
  p = np.asarray(sorting.ott_soft_permutation(scores, epsilon=1e-3, max_iterations=2000))
  np.testing.assert_array_equal(p.argmax(axis=1), np.argsort(-np.asarray(scores)))
  values = np.arange(5.0)
  np.testing.assert_allclose(p @ values, values[np.argsort(-np.asarray(scores))], atol=0.05)


# ----------------------------------------------------------------- augmentation semantics


def _aug_cfg(**kw):
  ds = base.get_config().dataset
  base.augmentation(base.get_config(), "digits")
  for k, v in dict(min_scale=1.0, flip=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, jitter_prob=0.0, gray_prob=0.0, image_size=8).items():
    ds[k] = v
  for k, v in kw.items():
    ds[k] = v
  return ds


def test_augmentation_at_zero_strength_is_the_identity_and_flip_mirrors():
  img = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 3))
  key = jax.random.PRNGKey(1)
  np.testing.assert_allclose(augment._color_jitter(key, img, (0.0, 0.0, 0.0, 0.0)), img,
                             atol=1e-5)
  plain = augment.augment_one(key, img, _aug_cfg())  # the crop alone (same key, same crop)
  np.testing.assert_allclose(plain, augment._random_resized_crop(
      jax.random.split(key, 5)[0], img, 8, 1.0), atol=1e-6)  # flip=0: never mirrored
  np.testing.assert_allclose(augment.augment_one(key, img, _aug_cfg(jitter_prob=1.0)), plain,
                             atol=1e-5)  # jitter of zero strength changes nothing
  np.testing.assert_allclose(augment.augment_one(key, img, _aug_cfg(flip=1.0)), plain[:, ::-1],
                             atol=1e-6)
  gray = augment.augment_one(key, img, _aug_cfg(gray_prob=1.0))
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
  for k in range(20):  # strong jitter and crops stay images in [0, 1]
    x = augment.augment_one(jax.random.PRNGKey(k), img, _aug_cfg(
        min_scale=0.2, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4, jitter_prob=1.0))
    assert x.shape == (8, 8, 3) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# ------------------------------------------------------------ feature-cache key invalidation


@pytest.mark.parametrize("change", [
    ("dataset", "min_scale", 0.9), ("dataset", "flip", 0.0), ("dataset", "image_size", 96),
    ("dataset", "normalization", "imagenet"), ("features", "seed", 5), ("features", "views", 3),
    ("seed", None, 1), ("weights", None, "other"), ("data", None, None)])
def test_feature_cache_key_changes_with_everything_it_depends_on(change):
  c = cifar_prefix_pretrained.get_config()
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (6, 4, 4, 3)).astype(np.uint8)
  s = protocol.Splits(x, np.zeros(6, np.int32), x[:2], np.zeros(2, np.int32), x,
                      np.zeros(6, np.int32), 1)
  key = feature_cache.cache_key(c, s, "w")
  section, name, value = change
  weights = "w"
  if section == "weights":
    weights = value
  elif section == "data":
    x2 = x.copy()
    x2[0, 0, 0, 0] ^= 1
    s = protocol.Splits(x2, s.train_labels, x[:2], s.query_labels, x2, s.db_labels, 1)
  elif section == "seed":
    c.seed = value  # features.seed = -1 follows the training seed
  else:
    c[section][name] = value
  assert feature_cache.cache_key(c, s, weights) != key


@pytest.mark.parametrize("change,differs", [
    (("dataset", "image_size", 96), True), (("dataset", "normalization", "imagenet"), True),
    (("model", "backbone", "efficientnet_lite2"), True), (("weights", None, "other"), True),
    (("dataset", "min_scale", 0.9), False), (("features", "views", 3), False),
    (("features", "seed", 5), False), (("seed", None, 1), False)])
def test_clean_store_is_shared_by_splits_views_and_seeds_only(change, differs):
  c = cifar_prefix_pretrained.get_config()
  folder = feature_cache.store_dir(c, "w")
  (section, name, value), weights = change, "w"
  if section == "weights":
    weights = value
  elif section == "seed":
    c.seed = value
  else:
    c[section][name] = value
  assert (feature_cache.store_dir(c, weights) != folder) == differs


# ----------------------------------------------------------------- multi-hot and slicing


def test_multi_hot_npz_through_the_standard_protocol(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "multi.npz")
  np.savez(path, train_images=rng.integers(0, 255, (12, 4, 4, 3)).astype(np.uint8),
           train_labels=(rng.random((12, 5)) < 0.4).astype(np.int32),
           test_images=rng.integers(0, 255, (3, 4, 4, 3)).astype(np.uint8),
           test_labels=(rng.random((3, 5)) < 0.4).astype(np.int32))
  c = base.get_config()
  c.dataset.name = f"npz:{path}"
  s = input_pipeline.load(c)
  assert s.multi_label and s.num_classes == 5 and s.db_labels.shape == (12, 5)
  c.dataset.val_queries_per_class = 1
  with pytest.raises(input_pipeline.DataError, match="multi-label"):
    input_pipeline.load(c)


def test_each_process_gets_its_slice_of_the_global_batch():
  images = np.arange(40)[:, None] * np.ones((1, 2))
  labels = np.arange(40)
  whole = [b for _, b, _ in input_pipeline.train_batches(images, labels, 8, 3, 0, 5)]
  parts = [[b for _, b, _ in input_pipeline.train_batches(images, labels, 8, 3, 0, 5, p, 4)]
           for p in range(4)]
  for step in range(5):
    np.testing.assert_array_equal(np.concatenate([parts[p][step] for p in range(4)]),
                                  whole[step])
    np.testing.assert_array_equal(whole[step][:, 0],
                                  input_pipeline.batch_indices(40, 8, 3, step))


# -------------------------------------------------------------------- multi-length heads


def test_multi_length_codes_are_prefixes_and_each_length_has_a_loss():
  from nsh_jax import step as step_lib
  c = base.get_config()
  c.model.bit_list, c.model.latent_dim, c.train.batch_size = (8, 16, 32), 16, 16
  mesh = state_lib.make_mesh()
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c))
  fn = step_lib.make_train_step(c, mesh, encoder_input.create(c).views)
  x = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)).astype(np.uint8)
  new, m = fn(state, x, np.zeros(16, np.int32))
  per = [float(m[f"loss_{b}bit"]) for b in (8, 16, 32)]
  assert all(np.isfinite(per)) and len(set(per)) == 3  # three different objectives
  assert [float(m[f"weight_{b}bit"]) for b in (8, 16, 32)] == [1.0, 1.0, 1.0]
  outs = new.apply_fn({"params": new.params}, x.astype(np.float32) / 255)
  assert outs["codes"].shape[1] == 32  # one head; shorter codes are its first bits


# ------------------------------------------------------------------------------ plots


@pytest.mark.parametrize("collapsed", [False, True])
def test_plots_are_written_and_collapsed_codes_do_not_crash(tmp_path, collapsed):
  """A run whose codes collapsed (one distinct code) still writes its curves; t-SNE, which
  has nothing to spread, is skipped (before: PCA divided by zero variance and the fit
  crashed the process at the end of training)."""
  from nsh_jax import plots
  rng = np.random.default_rng(0)
  labels = np.arange(40) % 4
  emb = np.ones((40, 16)) if collapsed else rng.normal(size=(40, 16))
  result = {"by_bits": {16: metrics.evaluate_codes(emb, emb, labels, labels, top_k=10)}}
  paths = plots.write_all(str(tmp_path), result, emb, labels)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == (["pr_curve.png", "precision_at_n.png"] if collapsed else
                   ["pr_curve.png", "precision_at_n.png", "tsne.png"])
  assert all(os.path.getsize(p) > 1000 for p in paths)


def test_code_version_is_read_once_at_the_first_call(monkeypatch):
  """A commit made while a run trains must not be recorded as the code that ran: the
  version is read at the first call (the trainer's start) and kept for the process."""
  from nsh_jax import files
  files._code_version.cache_clear()
  reads = iter([{"package": "p", "commit": "a" * 40, "dirty": False},
                {"package": "p", "commit": "b" * 40, "dirty": True}])
  monkeypatch.setattr(files, "_read_code_version", lambda: next(reads))
  try:
    first = files.code_version()
    first["commit"] = "changed by the caller"
    assert files.code_version() == {"package": "p", "commit": "a" * 40, "dirty": False}
  finally:
    files._code_version.cache_clear()


# ------------------------------------------------------------ configs/cifar.py variants


def test_cifar_lite2_default_differs_from_lite0_only_in_the_backbone():
  from configs import cifar
  lite0, lite2 = cifar.get_config("lite0"), cifar.get_config("lite2")
  assert cifar.get_config().to_dict() == lite2.to_dict()  # the default, chosen on validation
  assert (lite0.model.backbone, lite2.model.backbone) == ("efficientnet_lite0", "efficientnet_lite2")
  assert lite0.dataset.protocol == "paper" and lite0.dataset.val_queries_per_class == 100
  lite2.model.backbone = lite0.model.backbone
  assert lite2.to_dict() == lite0.to_dict()
  with pytest.raises(ValueError, match="unknown variant 'lite3'"):
    cifar.get_config("lite3")


# ------------------------------------------------------------ the digits loader


def test_digits_read_without_sklearn_equal_sklearns_loader():
  import subprocess
  import sys
  from sklearn.datasets import load_digits
  from conftest import ROOT
  images, labels = input_pipeline._digits_arrays()  # pylint: disable=protected-access
  ref = load_digits()
  np.testing.assert_array_equal(images, ref.images)
  np.testing.assert_array_equal(labels, ref.target)
  assert labels.dtype == np.int32 and images.shape == (1797, 8, 8)
  # What the speed-up is for: a run on digits never imports scikit-learn.
  code = ("import sys; from configs import default; from nsh_jax import input_pipeline; "
          "s = input_pipeline.load(default.get_config()); "
          "assert 'sklearn' not in sys.modules, 'sklearn imported'; print(len(s.db_labels))")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert int(res.stdout) == 1797 - 200
