"""The frozen-backbone feature cache: views drawn from it, chunked resumable extraction, a run on it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_main


def _backbone(c):
  """The frozen backbone's variables and their digest (the cache key's weights)."""
  from nsh_jax import files, models
  variables = models.pretrained_backbone(c.model.backbone, int(c.dataset.image_size))
  return variables, files.digest_arrays(*jax.tree.leaves(variables))


def _config(cache_dir, views=2):
  from configs import cifar_prefix_pretrained
  c = cifar_prefix_pretrained.get_config()
  c.dataset.image_size, c.features.views, c.features.chunk = 32, views, 8
  c.features.cache_dir = str(cache_dir)
  return c


def _splits(n=20, q=6, seed=0):
  from nsh_jax import input_pipeline
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 255, (n + q, 32, 32, 3)).astype(np.uint8)
  y = rng.integers(0, 2, n + q).astype(np.int32)
  train, labels = x[:n], y[:n]
  return input_pipeline.Splits(train, labels, x[n:], y[n:], train, labels, 2,
                               train_rows=np.arange(n))


def test_cached_views_are_two_distinct_views_per_example():
  from nsh_jax import encoder_input
  k_views, n = 5, 64
  feats = jnp.broadcast_to(jnp.arange(k_views, dtype=jnp.float32)[None, :, None], (n, k_views, 3))
  x = encoder_input.two_cached_views(jax.random.PRNGKey(0), feats, jnp.arange(n))
  first, second = np.asarray(x[:n, 0]), np.asarray(x[n:, 0])
  assert np.all(first != second) and set(first) | set(second) <= set(range(k_views))
  assert len(set(zip(first, second))) > 10  # many different pairs, not one fixed pair
  again = encoder_input.two_cached_views(jax.random.PRNGKey(0), feats, jnp.arange(n))
  np.testing.assert_array_equal(np.asarray(again), np.asarray(x))


def test_the_frozen_ceiling_alone_is_the_clean_features_cosine_ranking(tmp_path):
  # benchmarks/frozen_ceiling.py's row: no model, only the clean store's features.
  from nsh_jax import evaluation, feature_cache, metrics
  from nsh_jax.encoder_input import Features
  c, splits = _config(tmp_path), _splits()
  c.eval.top_k, c.eval.depths = 5, (0,)
  variables, digest = _backbone(c)
  f = feature_cache.clean_split_features(c, splits, variables, digest, log=lambda *a: 0)
  rows = evaluation.ceilings(c, splits, None, Features(f["train"], f["query"], f["database"]),
                             log=lambda *a: 0)
  assert set(rows) == {"features"}
  clean = feature_cache.clean_features(c, variables)
  q, db = np.asarray(clean(splits.query_images)), np.asarray(clean(splits.db_images))
  want = metrics.cosine_map(q, db, splits.query_labels, splits.db_labels, (5, None))
  assert rows["features"]["map_at"] == pytest.approx({"5": want[5], "all": want[None]}, abs=1e-6)


def test_extraction_is_chunked_keyed_and_resumes(tmp_path):
  from nsh_jax import feature_cache
  c, splits = _config(tmp_path), _splits()
  variables, digest = _backbone(c)
  logs = []
  fs = feature_cache.load_or_extract(c, splits, variables, digest, logs.append)
  assert fs.train_views.shape == (20, 2, 1280) and fs.query.shape == (6, 1280)
  # the prefix protocol: training images are database rows, extracted once
  np.testing.assert_array_equal(fs.train, fs.database)
  assert not any(f.startswith("train_") for f in os.listdir(fs.path))
  assert not np.allclose(fs.train_views[:, 0], fs.train_views[:, 1])  # two different views
  assert any("images/s" in line for line in logs)
  # The clean features are the backbone's on the resized images.
  from nsh_jax import augment, models
  x = augment.normalize(augment.resize(augment.to_unit(splits.query_images), 32), "lite")
  want = models.BackboneOnly(c.model.backbone).apply(variables, x)
  np.testing.assert_allclose(fs.query, np.asarray(want), rtol=1e-5, atol=1e-5)
  # A killed extraction: one chunk and the manifest missing.  Only that chunk is recomputed.
  os.remove(os.path.join(fs.path, "manifest.json"))
  os.remove(os.path.join(fs.path, "view1_00001.npy"))
  kept = os.path.getmtime(os.path.join(fs.path, "view0_00001.npy"))
  again = feature_cache.load_or_extract(c, splits, variables, digest, logs.append)
  np.testing.assert_array_equal(again.train_views, fs.train_views)
  assert os.path.getmtime(os.path.join(fs.path, "view0_00001.npy")) == kept
  assert os.path.exists(os.path.join(fs.path, "manifest.json"))
  # Another K or seed is another cache; the same ones reuse it.
  c.features.views = 3
  other = feature_cache.load_or_extract(c, splits, variables, digest, logs.append)
  assert other.path != fs.path and other.train_views.shape[1] == 3


def test_another_split_of_the_same_images_computes_only_its_views(tmp_path):
  from nsh_jax import feature_cache, input_pipeline
  c, splits = _config(tmp_path), _splits()
  variables, digest = _backbone(c)
  first = feature_cache.load_or_extract(c, splits, variables, digest, lambda *a: None)
  store = [d for d in os.listdir(tmp_path) if "-clean-" in d]
  assert len(store) == 1
  parts = sorted(os.listdir(tmp_path / store[0]))
  # Another split seed: the 26 images re-dealt (other queries, database order, training rows),
  # one image twice (27 lookups).
  x = np.concatenate([splits.db_images, splits.query_images])
  y = np.concatenate([splits.db_labels, splits.query_labels])
  perm = np.random.default_rng(5).permutation(26)
  db, q = perm[:18], np.concatenate([perm[18:], perm[:1]])
  other = input_pipeline.Splits(x[db[:10]], y[db[:10]], x[q], y[q], x[db], y[db], 2,
                                train_rows=np.arange(10))
  c.seed = 1
  logs = []
  fs = feature_cache.load_or_extract(c, other, variables, digest, logs.append)
  assert fs.path != first.path
  assert any("27 clean images found" in line for line in logs), logs
  assert sorted(os.listdir(tmp_path / store[0])) == parts  # nothing added to the store
  by_image = np.concatenate([first.database, first.query])
  np.testing.assert_array_equal(fs.database, by_image[db])
  np.testing.assert_array_equal(fs.query, by_image[q])
  assert fs.train_views.shape == (10, 2, 1280)
  # A new image is computed, added to the store, and equals the backbone on it.
  new = np.full((1, 32, 32, 3), 7, np.uint8)
  grown = input_pipeline.Splits(x[db[:10]], y[db[:10]], new, y[:1], x[db], y[db], 2,
                                train_rows=np.arange(10))
  fs = feature_cache.load_or_extract(c, grown, variables, digest, logs.append)
  assert len(os.listdir(tmp_path / store[0])) == len(parts) + 1
  np.testing.assert_allclose(fs.query, feature_cache.clean_features(c, variables)(new),
                             rtol=1e-5, atol=1e-5)
  assert feature_cache.image_keys(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 16)
  keys = feature_cache.image_keys(np.stack([new[0], new[0], x[0]]))
  assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).all()


@pytest.mark.slow
def test_training_on_the_cache_end_to_end(tmp_path):
  rng = np.random.default_rng(1)
  data = str(tmp_path / "d.npz")
  np.savez(data, train_images=rng.integers(0, 255, (48, 32, 32, 3)).astype(np.uint8),
           train_labels=rng.integers(0, 3, 48),
           test_images=rng.integers(0, 255, (8, 32, 32, 3)).astype(np.uint8),
           test_labels=rng.integers(0, 3, 8))
  args = ["--config=configs/cifar_prefix_pretrained.py", f"--config.dataset.name=npz:{data}",
          "--config.dataset.image_size=32", "--config.features.views=2",
          f"--config.features.cache_dir={tmp_path / 'cache'}", "--config.train.steps=4",
          "--config.train.batch_size=16", "--config.train.log_every=2",
          "--config.train.checkpoint_every=2", "--config.model.bit_list=(16,)",
          "--config.model.head_hidden=32", "--config.eval.top_k=10"]
  res = run_main(args + [f"--workdir={tmp_path / 'a'}"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "features: extracting" in res.stdout and "itq-features mAP@10 16-bit:" in res.stdout
  m = json.load(open(tmp_path / "a" / "metrics.json"))
  assert set(m["baselines"]) == {"itq-features", "lsh-features", "itq-pixels", "lsh-pixels"}
  # The ceiling rows: the clean features' and the hash layer's own cosine ranking, in the
  # closing table and metrics.json, equal to the metric computed here from the cache.
  assert set(m["ceiling"]) == {"features", "hash layer 16"}
  table = res.stdout.split("\nmAP@10 ")[-1]
  assert "features, cosine" in table and "hash layer, cosine" in table
  from nsh_jax import feature_cache, input_pipeline, metrics
  c = _config(tmp_path / "cache")
  c.dataset.name = f"npz:{data}"
  fs = feature_cache.load_or_extract(c, input_pipeline.load(c), *_backbone(c), log=lambda *a: 0)
  emb = np.load(tmp_path / "a" / "codes" / "embeddings.npz")
  want = metrics.cosine_map(fs.query, fs.database, emb["query_labels"], emb["database_labels"],
                            (10,))[10]
  assert m["ceiling"]["features"]["map_at"]["10"] == pytest.approx(want, abs=1e-9)
  res = run_main(args + [f"--workdir={tmp_path / 'b'}", "--config.seed=1",
                         "--config.features.seed=0"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "features: reusing the cache" in res.stdout  # seed 0's views, asked for by name

  # New images through the frozen backbone and the trained heads: the same codes as
  # the run's own database codes for the same images (written as lossless PNGs).
  from PIL import Image
  from nsh_jax import input_pipeline, modes, retrieval
  from configs import cifar_prefix_pretrained
  c = cifar_prefix_pretrained.get_config()
  c.dataset.name, c.dataset.image_size, c.features.views = f"npz:{data}", 32, 2
  c.features.cache_dir, c.train.steps, c.train.batch_size = str(tmp_path / "cache"), 4, 16
  c.model.bit_list, c.model.head_hidden, c.eval.top_k = (16,), 32, 10
  db = input_pipeline.load(c).db_images
  folder = tmp_path / "photos"
  folder.mkdir()
  for i, im in enumerate(db):
    Image.fromarray(im).save(folder / f"{i:04d}.png")
  modes.MODES.get("index")(c, str(tmp_path / "a"), {"input": str(folder), "output": None})
  got = retrieval.load_index(str(tmp_path / "a" / "index" / "codes_16bit.npz"))["codes"]
  want = retrieval.load_index(str(tmp_path / "a" / "codes" / "database_16bit.npz"))["codes"]
  np.testing.assert_array_equal(got, want)
