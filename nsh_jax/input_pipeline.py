"""Datasets and batches: TFDS / image folders / npz / bundled digits -> numpy uint8 batches.

Every dataset becomes a :class:`~nsh_jax.protocol.Splits` of uint8 NHWC images
and labels (int ``[n]`` or multi-hot ``[n, C]``): ``train`` (what the encoder
learns from), ``query`` and ``database`` (what retrieval is evaluated on), and
validation queries -- split by ``dataset.protocol`` (:mod:`nsh_jax.protocol`).

* ``digits`` -- scikit-learn's bundled 8x8 digits upsampled to 32x32 RGB: the
  offline default (20 queries per class from all images; the rest is train).
* ``npz:PATH`` -- ``train_images/train_labels/test_images/test_labels``.
* ``folder:PATH`` -- a directory or archive ``<split>/<class>/<image>``
  (:mod:`nsh_jax.image_folder`).
* ``cifar10`` -- TFDS where it is prepared or can be downloaded, else the image
  folder at ``dataset.offline_copy``.
* ``lists:PATH`` -- multi-label HashNet lists (``train.txt``, ``database.txt``,
  ``test.txt``: ``relative/path.jpg 0 1 0 ...``) and their images in a directory or
  archive (:mod:`nsh_jax.image_lists`): NUS-WIDE, MS-COCO, Corel-5k, your own.

Training batches are a pure function of ``(seed, step)`` (:func:`batch_indices`),
so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import queue
import threading
from typing import Iterator, Optional, Tuple

import numpy as np

from nsh_jax import image_folder, image_lists
from nsh_jax.errors import DataError
from nsh_jax.protocol import Splits, make_splits
from nsh_jax.registry import Registry


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


def _digits_arrays():
  """scikit-learn's 1,797 digits: ``(images [n, 8, 8] in 0..16, labels [n])``.

  Read from the CSV that scikit-learn ships (64 pixel columns, then the label) without
  importing scikit-learn, whose import costs seconds per run; its loader where the file
  is elsewhere.
  """
  spec = importlib.util.find_spec("sklearn")  # locates the package, does not import it
  path = (os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
          if spec and spec.submodule_search_locations else "")
  if os.path.exists(path):
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
  from sklearn.datasets import load_digits as sk_digits
  d = sk_digits()
  return d.images, d.target.astype(np.int32)


def load_digits(config) -> Splits:
  """scikit-learn's digits, 20 test queries per class (picked by ``dataset.split_seed``)."""
  from nsh_jax.protocol import balanced_pick
  images, labels = _digits_arrays()
  img = (images / 16.0 * 255.0).astype(np.uint8)  # [n, 8, 8]
  img = np.repeat(np.repeat(img, 4, axis=1), 4, axis=2)  # 32x32, nearest
  img = np.repeat(img[..., None], 3, axis=-1)
  q = balanced_pick(labels, 20, np.random.default_rng(int(config.dataset.split_seed)))
  rest = np.setdiff1d(np.arange(len(labels)), q)
  return make_splits(config.dataset, (img[rest], labels[rest]), (img[q], labels[q]), 10)


def load_npz(config, path: str) -> Splits:
  """``train_images/train_labels/test_images/test_labels`` of an .npz, by ``dataset.protocol``."""
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
  return make_splits(config.dataset, (tr, trl), (te, tel), num_classes)


def load_folder(config, path: str) -> Splits:
  """An image folder or archive ``<split>/<class>/<image>`` (:mod:`nsh_jax.image_folder`)."""
  if not path:
    raise DataError("dataset.name='folder:PATH' needs PATH: a directory or archive with "
                    "train/<class>/<image> and test/<class>/<image>")
  data, class_names = image_folder.read_split_folder(path, int(config.dataset.image_size))
  names = {s: v[2] for s, v in data.items()}
  return make_splits(config.dataset, data["train"][:2], data["test"][:2], len(class_names),
                     data["database"][:2] if "database" in data else None, class_names, names)


def _tfds_prepared(data_dir: Optional[str]) -> bool:
  """Whether TFDS cifar10 is prepared under ``data_dir`` (files only: no TensorFlow
  import, no network); a remote ``data_dir`` (``gs://``) is left to TFDS."""
  if data_dir and "://" in data_dir:
    return True
  root = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                            or os.path.join("~", "tensorflow_datasets"))
  return bool(glob.glob(os.path.join(root, "cifar10", "*", "dataset_info.json")))


def load_cifar10(config) -> Splits:
  """CIFAR-10: TFDS where it is prepared (or may be downloaded), else the local image-folder
  copy ``dataset.offline_copy``; split by ``dataset.protocol``."""
  ds = config.dataset
  data_dir = ds.data_dir or None
  local = os.path.expanduser(ds.offline_copy) if ds.offline_copy else ""
  if not _tfds_prepared(data_dir) and local and os.path.exists(local):
    print(f"data: TFDS cifar10 is not prepared here; reading the local copy {local} "
          f"(JPEG re-encoding of CIFAR-10)")
    return load_folder(config, local)
  import tensorflow_datasets as tfds
  try:
    train, test = tfds.load("cifar10", split=["train", "test"], as_supervised=True,
                            data_dir=data_dir, download=bool(ds.download))
  except Exception as e:
    raise DataError(f"TFDS cifar10 is not available ({type(e).__name__}) and no local copy "
                    f"at dataset.offline_copy={ds.offline_copy!r}: run once with internet to "
                    f"download it, or point dataset.offline_copy at an image folder")
  # Batched reads, not batch_size=-1: that crashes TF on generator-backed
  # datasets of unknown size (tfds.testing.mock_data).
  def to_numpy(d):
    parts = list(tfds.as_numpy(d.batch(10000)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
  return make_splits(ds, to_numpy(train), to_numpy(test), 10, class_names=names)


def load_lists(config, path: str) -> Splits:
  """Multi-label HashNet lists and their images in a directory or archive
  (:mod:`nsh_jax.image_lists`); the lists define the protocol (``'standard'``)."""
  path = path or config.dataset.data_dir
  if not path:
    raise DataError("dataset.name='lists:PATH' needs PATH (or dataset.data_dir): a directory "
                    "or archive with train.txt, database.txt, test.txt and the images they list")
  if config.dataset.protocol != "standard":
    raise DataError(f"dataset.protocol={config.dataset.protocol!r}: list datasets define their "
                    f"own protocol (test.txt queries database.txt); use 'standard'")
  data, classes = image_lists.read_list_dataset(os.path.expanduser(path),
                                                int(config.dataset.image_size))
  names = {s: v[2] for s, v in data.items()}
  return make_splits(config.dataset, data["train"][:2], data["test"][:2],
                     data["train"][1].shape[1], data["database"][:2], classes, names)


DATASETS = Registry("dataset", "dataset.name")
DATASETS.register("digits")(lambda config, arg: load_digits(config))
DATASETS.register("npz")(lambda config, path: load_npz(config, os.path.expanduser(path)))
DATASETS.register("folder")(lambda config, path: load_folder(config, os.path.expanduser(path)))
DATASETS.register("cifar10")(lambda config, arg: load_cifar10(config))
DATASETS.register("lists")(lambda config, path: load_lists(config, path))


def split_name(name: str) -> Tuple[str, str]:
  """``'npz:/a/b.npz'`` -> ``('npz', '/a/b.npz')``; ``'digits'`` -> ``('digits', '')``."""
  kind, _, arg = name.partition(":")
  return kind, arg


def load(config) -> Splits:
  """The splits for ``config.dataset`` (see module docstring): ``DATASETS[name](config, arg)``."""
  kind, arg = split_name(config.dataset.name)
  if kind not in DATASETS:
    raise DataError(f"unknown dataset.name {config.dataset.name!r}; use one of "
                    f"{', '.join(n for n in DATASETS.names() if n not in ('npz', 'folder', 'lists'))}, "
                    f"npz:/path/file.npz, folder:/path/to/images or lists:/path/to/lists")
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
