"""Datasets and batches: TFDS / npz / bundled digits -> numpy uint8 batches.

Every dataset becomes a :class:`Splits` of uint8 NHWC images and labels (int
``[n]`` or multi-hot ``[n, C]``): ``train`` (what the encoder learns from),
``query`` and ``database`` (what retrieval is evaluated on).

* ``digits`` -- scikit-learn's bundled 8x8 digits upsampled to 32x32 RGB: the
  offline default (20 queries per class, the rest database = train).
* ``npz:PATH`` -- ``train_images/train_labels/test_images/test_labels``:
  test = queries, train = database = training set.
* ``cifar10`` -- TFDS; the unsupervised-hashing protocol: 1,000 queries
  (100/class) from the test set, the other 59,000 images as database, 5,000
  training images (500/class) drawn from the database; seeded.
* ``nus_wide`` / ``coco`` -- a user-provided directory with HashNet-style lists
  (``train.txt``, ``test.txt``, ``database.txt``: ``relative/path.jpg 0 1 0 ...``).

Training batches are a pure function of ``(seed, step)`` (:func:`batch_indices`),
so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Iterator, Optional, Tuple

import numpy as np

from nsh_jax.errors import DataError
from nsh_jax.registry import Registry


@dataclasses.dataclass
class Splits:
  train_images: np.ndarray
  train_labels: np.ndarray
  query_images: np.ndarray
  query_labels: np.ndarray
  db_images: np.ndarray
  db_labels: np.ndarray
  num_classes: int

  @property
  def multi_label(self) -> bool:
    return self.train_labels.ndim == 2


# ------------------------------------------------------------------ validation


def check_images(name: str, images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f"{name} must be uint8 [n, H, W, 3] (NHWC RGB); got {images.dtype} "
                    f"{images.shape}")
  if images.dtype != np.uint8:
    raise DataError(f"{name} must be uint8 (0-255); got dtype {images.dtype}")
  if images.shape[0] == 0:
    raise DataError(f"{name} is empty: the split has no images")
  return images


def check_labels(name: str, labels, n: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim not in (1, 2) or labels.shape[0] != n:
    raise DataError(f"{name} must be [n] ints or [n, C] multi-hot with n={n}; got shape "
                    f"{labels.shape}")
  if labels.ndim == 1 and not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{name} must be integers; got dtype {labels.dtype}")
  if labels.ndim == 1 and labels.min() < 0:
    raise DataError(f"{name} has negative class ids")
  return labels.astype(np.int32)


# --------------------------------------------------------------------- loaders


def _balanced_pick(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
  picks = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise DataError(f"class {c} has {len(members)} images, fewer than {per_class} per class")
    picks.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(picks))


def load_digits(seed: int = 0, queries_per_class: int = 20) -> Splits:
  from sklearn.datasets import load_digits as sk_digits
  d = sk_digits()
  img = (d.images / 16.0 * 255.0).astype(np.uint8)  # [n, 8, 8]
  img = np.repeat(np.repeat(img, 4, axis=1), 4, axis=2)  # 32x32, nearest
  img = np.repeat(img[..., None], 3, axis=-1)
  labels = d.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  q = _balanced_pick(labels, queries_per_class, rng)
  rest = np.setdiff1d(np.arange(len(labels)), q)
  return Splits(img[rest], labels[rest], img[q], labels[q], img[rest], labels[rest], 10)


def load_npz(path: str) -> Splits:
  if not os.path.exists(path):
    raise DataError(f"dataset file not found: {path} (dataset.name='npz:PATH' needs an "
                    f".npz with train_images/train_labels/test_images/test_labels)")
  try:
    f = np.load(path, allow_pickle=False)
  except Exception as e:
    raise DataError(f"cannot read {path} as .npz ({type(e).__name__}: {e})")
  with f:
    need = ("train_images", "train_labels", "test_images", "test_labels")
    missing = [k for k in need if k not in f.files]
    if missing:
      raise DataError(f"{path} is missing keys {missing}; it has {sorted(f.files)}")
    tr = check_images(f"{path}:train_images", f["train_images"])
    te = check_images(f"{path}:test_images", f["test_images"])
    trl = check_labels(f"{path}:train_labels", f["train_labels"], tr.shape[0])
    tel = check_labels(f"{path}:test_labels", f["test_labels"], te.shape[0])
  if tr.shape[1:] != te.shape[1:]:
    raise DataError(f"{path}: train images {tr.shape[1:]} and test images {te.shape[1:]} "
                    f"differ in size")
  if trl.ndim != tel.ndim or (trl.ndim == 2 and trl.shape[1] != tel.shape[1]):
    raise DataError(f"{path}: train labels {trl.shape} and test labels {tel.shape} disagree")
  num_classes = trl.shape[1] if trl.ndim == 2 else int(max(trl.max(), tel.max()) + 1)
  return Splits(tr, trl, te, tel, tr, trl, num_classes)


def load_cifar10(seed: int = 0, data_dir: Optional[str] = None, download: bool = True,
                 queries_per_class: int = 100, train_per_class: int = 500) -> Splits:
  import tensorflow_datasets as tfds
  try:
    train, test = tfds.load("cifar10", split=["train", "test"], as_supervised=True,
                            data_dir=data_dir, download=download)
  except Exception as e:
    raise DataError(f"TFDS cifar10 is not available ({type(e).__name__}): run once with "
                    f"internet to download it, or set dataset.data_dir to a prepared TFDS dir")
  # Batched reads, not batch_size=-1: that crashes TF on generator-backed
  # datasets of unknown size (tfds.testing.mock_data).
  def to_numpy(ds):
    parts = list(tfds.as_numpy(ds.batch(10000)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  tr_x, tr_y = to_numpy(train)
  te_x, te_y = to_numpy(test)
  rng = np.random.default_rng(seed)
  q = _balanced_pick(te_y, queries_per_class, rng)
  rest_test = np.setdiff1d(np.arange(len(te_y)), q)
  db_x = np.concatenate([tr_x, te_x[rest_test]])
  db_y = np.concatenate([tr_y, te_y[rest_test]]).astype(np.int32)
  t = _balanced_pick(db_y, train_per_class, rng)
  return Splits(db_x[t], db_y[t], te_x[q], te_y[q].astype(np.int32), db_x, db_y, 10)


def load_list_dir(name: str, data_dir: Optional[str], image_size: int) -> Splits:
  """NUS-WIDE / COCO from HashNet-style lists in ``data_dir``."""
  how = {"nus_wide": "NUS-WIDE-21 (HashNet lists: 10,500 train / 2,100 test)",
         "coco": "MS-COCO (HashNet lists: 10,000 train / 5,000 test)"}[name]
  if not data_dir or not os.path.isdir(data_dir):
    raise DataError(f"{name} needs dataset.data_dir: a directory with train.txt, test.txt, "
                    f"database.txt and the images they list ({how}); got {data_dir!r}")
  from PIL import Image
  out = {}
  for split in ("train", "test", "database"):
    lst = os.path.join(data_dir, f"{split}.txt")
    if not os.path.exists(lst):
      raise DataError(f"{name}: missing {lst} (lines 'relative/path.jpg 0 1 0 ...')")
    paths, labels = [], []
    with open(lst) as f:
      for line in f:
        parts = line.split()
        if parts:
          paths.append(parts[0])
          labels.append([int(v) for v in parts[1:]])
    if not paths:
      raise DataError(f"{name}: {lst} lists no images")
    imgs = np.stack([np.asarray(Image.open(os.path.join(data_dir, p)).convert("RGB")
                                .resize((image_size, image_size))) for p in paths])
    out[split] = (imgs.astype(np.uint8), np.asarray(labels, np.int32))
  labels = out["train"][1]
  return Splits(*out["train"], *out["test"], *out["database"], labels.shape[1])


DATASETS = Registry("dataset", "dataset.name")
DATASETS.register("digits")(lambda config, arg: load_digits(config.seed))
DATASETS.register("npz")(lambda config, path: load_npz(os.path.expanduser(path)))
DATASETS.register("cifar10")(lambda config, arg: load_cifar10(
    config.seed, config.dataset.data_dir or None, config.dataset.download))
DATASETS.register("nus_wide")(lambda config, arg: load_list_dir(
    "nus_wide", config.dataset.data_dir or None, config.dataset.image_size))
DATASETS.register("coco")(lambda config, arg: load_list_dir(
    "coco", config.dataset.data_dir or None, config.dataset.image_size))


def split_name(name: str) -> Tuple[str, str]:
  """``'npz:/a/b.npz'`` -> ``('npz', '/a/b.npz')``; ``'digits'`` -> ``('digits', '')``."""
  kind, _, arg = name.partition(":")
  return kind, arg


def load(config) -> Splits:
  """The splits for ``config.dataset`` (see module docstring): ``DATASETS[name](config, arg)``."""
  kind, arg = split_name(config.dataset.name)
  if kind not in DATASETS:
    raise DataError(f"unknown dataset.name {config.dataset.name!r}; use one of "
                    f"{', '.join(n for n in DATASETS.names() if n != 'npz')} or npz:/path/file.npz")
  return DATASETS.get(kind)(config, arg)


# --------------------------------------------------------------------- batches


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Global batch ``step`` of a seeded epoch-wise shuffle (drop remainder).

  A pure function of its arguments: resuming at any step gives the same data.
  """
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise DataError(f"train.batch_size={batch_size} is larger than the training split "
                    f"({num_examples} images); lower it")
  epoch, offset = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[offset * batch_size:(offset + 1) * batch_size]


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start_step: int, num_steps: int, process_index: int = 0,
                  process_count: int = 1, prefetch: int = 4
                  ) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
  """Yields ``(step, images, labels)`` for steps ``[start_step, num_steps)``.

  Each process gets its contiguous slice of the global batch (multi-host); a
  background thread gathers ahead so the host never stalls the device.
  """
  local = batch_size // process_count
  lo = process_index * local

  def produce(q: queue.Queue, stop: threading.Event):
    try:
      for step in range(start_step, num_steps):
        if stop.is_set():
          return
        idx = batch_indices(images.shape[0], batch_size, seed, step)[lo:lo + local]
        _put(q, stop, (step, images[idx], labels[idx]))
      _put(q, stop, None)
    except BaseException as e:  # pylint: disable=broad-except
      # Handed to the consumer, which raises it: a dead producer must not leave
      # the training loop waiting on an empty queue.
      _put(q, stop, _Failed(e))

  q: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  thread = threading.Thread(target=produce, args=(q, stop), daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is None:
        return
      if isinstance(item, _Failed):
        raise item.error
      yield item
  finally:
    stop.set()


class _Failed:
  """What a failed producer thread puts on the queue instead of a batch."""

  def __init__(self, error: BaseException):
    self.error = error


def _put(q: queue.Queue, stop: threading.Event, item) -> None:
  """``q.put(item)`` that gives up once the consumer has stopped (no thread left blocked)."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return
    except queue.Full:
      continue
