"""Frozen-backbone features computed once and kept on disk, for training heads without the backbone.

A frozen backbone's output for a given view never changes, so for
``features.views = K > 0`` the trainer does not run the backbone every step:
it extracts, once,

* ``train_views`` ``[N, K, F]`` -- features of K augmented views of every
  training image (view ``k`` of image ``i`` drawn with
  ``fold_in(fold_in(PRNGKey(view_seed), k), i)`` by the one augmentation,
  :func:`nsh_jax.augment.augment_one`);
* ``train`` / ``query`` / ``database`` ``[*, F]`` -- features of the clean images
  (resized to ``dataset.image_size``), what evaluation and the baselines use;

and trains the heads on them (two distinct cached views per example and step).

The cache lives under ``features.cache_dir`` (default ``~/.cache/nsh-jax/features``,
or ``$NSH_JAX_CACHE``), shared by every work dir and run, in two kinds of folder:

* the **views** of one split, in a folder named by a digest of what determines
  them: backbone, weights digest, input resolution and normalisation,
  augmentation settings, K, seed and a digest of the images;
* the **clean store** of one backbone (weights, resolution, normalisation),
  ``<backbone>-clean-<digest>``: clean features keyed by a digest of each image's
  pixels.  Another split of the same images (another split seed: other queries,
  database order and training subset) finds every clean feature there and
  computes only its views -- for the paper's protocol on CIFAR-10, 30,000
  forward passes instead of 90,000.

Extraction writes chunks of ``features.chunk`` images, each atomically (temp
file, then rename), so a killed extraction resumes at the first missing chunk;
the views folder's ``manifest.json`` is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax import augment, models
from nsh_jax.files import digest_arrays, format_duration, map_chunks

__all__ = ["FeatureSet", "cache_dir", "cache_key", "view_seed", "store_dir", "image_keys",
           "clean_features", "clean_split_features", "extract", "load_or_extract"]

_AUG_KEYS = ("min_scale", "brightness", "contrast", "saturation", "hue", "jitter_prob",
             "gray_prob", "flip")


@dataclasses.dataclass
class FeatureSet:
  """Cached backbone features (float32): ``train_views`` ``[N, K, F]``, ``train``,
  ``query``, ``database`` ``[*, F]``; ``path`` is the cache folder."""
  train_views: np.ndarray
  train: np.ndarray
  query: np.ndarray
  database: np.ndarray
  path: str


def cache_dir(config) -> str:
  return os.path.expanduser(config.features.cache_dir or os.environ.get("NSH_JAX_CACHE")
                            or os.path.join("~", ".cache", "nsh-jax", "features"))


def view_seed(config) -> int:
  """The seed of the cached views: ``features.seed``, or ``config.seed`` when it is -1
  (the default: each training seed draws its own views)."""
  seed = int(config.features.seed)
  return int(config.seed) if seed < 0 else seed


def _part(stop: Optional[int]) -> dict:
  """The cache key's entry for a trunk (the activation entering block ``stop``); none for
  the whole backbone's pooled features (so their caches keep their names)."""
  return {} if stop is None else {"stop": int(stop)}


def cache_key(config, splits, weights_digest: str, stop: Optional[int] = None) -> Dict:
  """Everything the cached features depend on (its digest names the folder)."""
  ds = config.dataset
  return {"backbone": config.model.backbone, "weights": weights_digest,
          "image_size": int(ds.image_size), "normalization": ds.normalization,
          "augmentation": {k: float(ds[k]) for k in _AUG_KEYS},
          "views": int(config.features.views), "seed": view_seed(config),
          "data": digest_arrays(splits.train_images, splits.query_images, splits.db_images),
          "format": 3, **_part(stop)}


def image_keys(images: np.ndarray) -> np.ndarray:
  """``[n, 16]`` uint8: a BLAKE2b digest of each image's shape and pixels (the clean
  store's key; identical images share it)."""
  shape = str(images.shape[1:]).encode()
  return np.stack([np.frombuffer(hashlib.blake2b(shape + np.ascontiguousarray(im).tobytes(),
                                                 digest_size=16).digest(), np.uint8)
                   for im in images]) if len(images) else np.zeros((0, 16), np.uint8)


def store_dir(config, weights_digest: str, stop: Optional[int] = None) -> str:
  """The clean store's folder: it depends on the backbone, its weights, the resolution and
  the normalisation (and the trunk's end) -- not on the split, views, augmentation or seeds."""
  ds = config.dataset
  key = {"backbone": config.model.backbone, "weights": weights_digest,
         "image_size": int(ds.image_size), "normalization": ds.normalization, "format": 1,
         **_part(stop)}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(cache_dir(config), f"{config.model.backbone}-clean-{digest}")


def _from_store(folder: str, arrays, chunk: int, fn: Callable, progress: "_Progress"):
  """``[[n_i, F], ...]`` clean features of each ``arrays[i]`` (images): those in the store
  read (the store is read once for all of them), the others computed ``chunk`` at a time by
  ``fn`` (zero-padded) and added to it, each chunk one ``part-<digest>.npz`` (``keys [m, 16]``,
  ``features [m, F]``)."""
  os.makedirs(folder, exist_ok=True)
  keys = [image_keys(x) for x in arrays]
  index, parts = {}, []
  for name in sorted(os.listdir(folder)):
    if name.startswith("part-") and name.endswith(".npz") and ".tmp-" not in name:
      with np.load(os.path.join(folder, name)) as z:
        parts.append(z["features"])
        index.update((k.tobytes(), (len(parts) - 1, r)) for r, k in enumerate(z["keys"]))
  first = {}  # key -> (array, row) of its first occurrence
  for a, ks in enumerate(keys):
    for r, k in enumerate(ks):
      first.setdefault(k.tobytes(), (a, r))
  missing = [[r for k, (b, r) in first.items() if b == a and k not in index]
             for a in range(len(arrays))]
  progress.advance(sum(len(x) for x in arrays) - sum(map(len, missing)), False)
  # Chunks never mix arrays: the chunks of a cold extraction stay those each split was
  # extracted in before the store was read once (so cached and fresh features agree).
  for a, rows_a in enumerate(missing):
    def add(batch, lo, a=a, rows_a=rows_a):
      rows = np.asarray(rows_a[lo:lo + chunk])
      feats = np.asarray(fn(batch), np.float32)[:len(rows)]
      part_keys = keys[a][rows]
      name = f"part-{hashlib.sha256(part_keys.tobytes()).hexdigest()[:20]}.npz"
      _write_atomic(os.path.join(folder, name), keys=part_keys, features=feats)
      parts.append(feats)
      index.update((k.tobytes(), (len(parts) - 1, r)) for r, k in enumerate(part_keys))
      progress.advance(len(rows), True)
      return feats
    if rows_a:
      map_chunks(add, arrays[a][np.asarray(rows_a)], chunk)
  width = parts[0].shape[1] if parts else 0
  return [np.stack([parts[p][r] for p, r in (index[k.tobytes()] for k in ks)]) if len(ks)
          else np.zeros((0, width), np.float32) for ks in keys]


def _write_atomic(path: str, array: np.ndarray = None, **arrays) -> None:
  """``array`` as ``.npy`` (or ``arrays`` as ``.npz``) at ``path``: a temp file, then a rename."""
  if arrays:
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
  else:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, array)
  os.replace(tmp, path)


class _Progress:
  """A line every ``every`` seconds and at the end: images done, images/s, ETA
  (chunks already in the cache count as done, not in the rate)."""

  def __init__(self, total: int, log: Callable, every: float = 10.0):
    self.total, self.log, self.every = total, log, every
    self.done, self.computed, self.t0 = 0, 0, time.time()
    self.last = self.t0

  def advance(self, images: int, computed: bool) -> None:
    self.done += images
    if not computed:
      return
    self.computed += images
    if time.time() - self.last < self.every and self.done < self.total:
      return
    self.last = time.time()
    rate = self.computed / max(time.time() - self.t0, 1e-9)
    self.log(f"features: {self.done}/{self.total} images | {rate:.1f} images/s | "
             f"ETA {format_duration((self.total - self.done) / max(rate, 1e-9))}")


def _jitted_backbone(config, variables, stop: Optional[int] = None):
  """``(images_u8 [b, H, W, 3]) -> [b, F]`` on clean images, and
  ``(key, images_u8, ids [b]) -> [b, F]`` on one augmented view of each: the frozen
  backbone's pooled features, or (``stop``) its trunk's activations entering block ``stop``,
  flattened."""
  ds = config.dataset
  module = models.BackboneOnly(config.model.backbone, stop=stop)
  run = lambda x01: module.apply(variables, augment.normalize(x01, ds.normalization)).reshape(
      x01.shape[0], -1)

  def view(key, images, ids):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    return run(jax.vmap(lambda k, im: augment.augment_one(k, im, ds))(keys, augment.to_unit(images)))

  clean = lambda images: run(augment.resize(augment.to_unit(images), ds.image_size))
  return jax.jit(clean), jax.jit(view)


def clean_features(config, variables, stop: Optional[int] = None) -> Callable:
  """``images_u8 [n, H, W, 3] -> float32 [n, F]``: the frozen backbone (or trunk) on clean
  images, in zero-padded chunks of ``features.chunk`` -- the very computation the cache's
  ``query``/``database`` features came from, so new images get the same features."""
  clean, _ = _jitted_backbone(config, variables, stop)
  chunk = int(config.features.chunk)
  return lambda images: map_chunks(lambda batch, lo: clean(batch), images, chunk).astype(
      np.float32)


def _chunks(folder: str, name: str, images: np.ndarray, chunk: int, fn: Callable,
            progress: _Progress) -> np.ndarray:
  """``fn(images[lo:hi] zero-padded to chunk, lo) -> [chunk, F]`` over all images, each
  chunk saved once (atomically) and read back on a rerun."""
  def one(batch, lo):
    path = os.path.join(folder, f"{name}_{lo // chunk:05d}.npy")
    rows = min(chunk, images.shape[0] - lo)
    computed = not os.path.exists(path)
    if computed:
      _write_atomic(path, np.asarray(fn(batch, lo), np.float32)[:rows])
    progress.advance(rows, computed)
    return np.load(path)
  return map_chunks(one, images, chunk)


def _clean_splits(splits, store: str, chunk: int, clean: Callable, progress, log) -> dict:
  """``{'train', 'query', 'database': [*, F]}`` clean features of the splits from the store
  ``store`` (the missing ones computed by ``clean`` and added to it)."""
  # Training images that are database rows are not looked up twice.
  named = [("query", splits.query_images), ("database", splits.db_images)]
  if splits.train_rows is None:
    named.insert(0, ("train", splits.train_images))
  out = dict(zip([n for n, _ in named],
                 _from_store(store, [x for _, x in named], chunk, clean, progress)))
  if progress.done > progress.computed:
    log(f"features: {progress.done - progress.computed} clean images found in {store}")
  if splits.train_rows is not None:
    out["train"] = out["database"][splits.train_rows]
  return out


def clean_split_features(config, splits, variables, weights_digest: str, log=print) -> dict:
  """``{'train', 'query', 'database': [*, F]}``: the frozen backbone's clean pooled features
  of the splits, from (and into) its clean store -- no views."""
  clean, _ = _jitted_backbone(config, variables)
  progress = _Progress(sum(x.shape[0] for x in (splits.query_images, splits.db_images)), log)
  return _clean_splits(splits, store_dir(config, weights_digest), int(config.features.chunk),
                       clean, progress, log)


def extract(config, splits, variables, folder: str, store: str, log=print,
            stop: Optional[int] = None) -> FeatureSet:
  """Computes (or resumes) the views in ``folder`` and the clean features missing from
  the clean store ``store``; returns the split's features."""
  os.makedirs(folder, exist_ok=True)
  clean, view = _jitted_backbone(config, variables, stop)
  chunk, k_views = int(config.features.chunk), int(config.features.views)
  n_train = splits.train_images.shape[0]
  n_clean = splits.query_images.shape[0] + splits.db_images.shape[0] + (
      n_train if splits.train_rows is None else 0)
  progress = _Progress(n_train * k_views + n_clean, log)
  out = _clean_splits(splits, store, chunk, clean, progress, log)
  base = jax.random.PRNGKey(view_seed(config))
  views = [_chunks(folder, f"view{k}", splits.train_images, chunk,
                   lambda b, lo, key=jax.random.fold_in(base, k): view(
                       key, b, jnp.arange(lo, lo + chunk, dtype=jnp.int32)), progress)
           for k in range(k_views)]
  width = out["train"].shape[1]
  train_views = (np.stack(views, axis=1) if views
                 else np.zeros((n_train, 0, width), np.float32))
  return FeatureSet(train_views, out["train"], out["query"], out["database"], folder)


def load_or_extract(config, splits, variables, weights_digest: str, log=print,
                    stop: Optional[int] = None) -> FeatureSet:
  """The cached features for this config and data (``stop``: of the trunk entering that
  block): read if complete, else extracted."""
  key = cache_key(config, splits, weights_digest, stop)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  folder = os.path.join(cache_dir(config), f"{config.model.backbone}-{digest}")
  manifest = os.path.join(folder, "manifest.json")
  if os.path.exists(manifest):
    log(f"features: reusing the cache in {folder}")
  else:
    log(f"features: extracting into {folder} ({key['views']} augmented views per training "
        f"image + clean images, {key['image_size']} px)")
  fs = extract(config, splits, variables, folder, store_dir(config, weights_digest, stop), log,
               stop)
  if not os.path.exists(manifest) and jax.process_index() == 0:
    tmp = manifest + ".tmp"
    with open(tmp, "w") as f:
      json.dump({**key, "shapes": {"train_views": list(fs.train_views.shape)}}, f, indent=1)
    os.replace(tmp, manifest)
  return fs
