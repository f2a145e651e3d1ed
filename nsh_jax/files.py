"""Small helpers shared by the trainer, the feature cache, the evaluator and the command modes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from typing import Callable

import numpy as np

__all__ = ["write_json", "read_json", "digest_arrays", "format_duration", "code_version",
           "map_chunks", "provenance"]


def digest_arrays(*arrays, length: int = 16) -> str:
  """Hex SHA-256 (first ``length`` characters) of arrays' dtypes, shapes and bytes."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:length]


def map_chunks(fn: Callable, x: np.ndarray, chunk: int) -> np.ndarray:
  """``concatenate_i fn(x[lo_i:lo_i + chunk] zero-padded to chunk rows, lo_i)[:rows_i]``:
  a batched function over all rows of ``x`` with one compiled shape for every call
  (the one chunked-encoding loop: evaluation, feature extraction, new images)."""
  out = []
  for lo in range(0, x.shape[0], chunk):
    part = x[lo:lo + chunk]
    rows = part.shape[0]
    if rows < chunk:
      part = np.concatenate([part, np.zeros((chunk - rows,) + part.shape[1:], part.dtype)])
    out.append(np.asarray(fn(part, lo))[:rows])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def format_duration(seconds: float) -> str:
  """``'1h02m'`` from an hour on, else ``'3m07s'``."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON atomically (temp file, then rename); arrays become lists."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
  os.replace(tmp, path)


def read_json(path: str, default=None):
  """The JSON value in ``path``, or ``default`` when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


@functools.lru_cache(maxsize=None)
def _code_version() -> tuple:
  return tuple(_read_code_version().items())


def code_version() -> dict:
  """``{'package', 'commit', 'dirty'}`` of the code running now: the git commit of the
  checkout holding this package and whether its tracked files differ from it (no git:
  the package version alone).  Read once per process, at the first call (the trainer
  calls it when it starts): the modules were imported from the checkout as it was then,
  and a commit made while a run trains must not be recorded as the code that ran."""
  return dict(_code_version())


def _read_code_version() -> dict:
  from nsh_jax import __version__
  here = os.path.dirname(os.path.abspath(__file__))
  out = {"package": __version__, "commit": None, "dirty": None}
  try:
    git = lambda *a: subprocess.run(("git", "-C", here) + a, capture_output=True, text=True,
                                    timeout=10)
    head = git("rev-parse", "HEAD")
    if head.returncode == 0:
      out["commit"] = head.stdout.strip()
      out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  return out


def provenance(config, splits) -> dict:
  """What a result was computed from: the full config, the code version and a digest
  of the data as split (images and labels of train, query and database), the class
  names and the split sizes -- so that no table reuses a run of another config or code."""
  sizes = {"train": int(splits.train_labels.shape[0]), "query": int(splits.query_labels.shape[0]),
           "database": int(splits.db_labels.shape[0]),
           "validation": 0 if splits.val_rows is None else int(len(splits.val_rows))}
  return {"config": config.to_dict(), "code_version": code_version(),
          "data_digest": digest_arrays(splits.train_images, splits.train_labels,
                                       splits.query_images, splits.query_labels,
                                       splits.db_images, splits.db_labels),
          "class_names": list(splits.class_names) if splits.class_names else None,
          "split_sizes": sizes}
