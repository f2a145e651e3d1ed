"""Multi-label datasets in the HashNet list format: NUS-WIDE, MS-COCO, Corel-5k, your own.

``PATH`` is a directory or an archive (read in place, as :mod:`nsh_jax.image_folder`
reads them; an archive with one top folder is read from inside it) holding

* ``train.txt``, ``database.txt``, ``test.txt`` -- one line per image:
  ``relative/path.jpg 0 1 0 ...``, the image's path relative to ``PATH`` and its
  multi-hot labels (0/1, the same number on every line; at least one 1);
* the images those lines name (any format Pillow reads, any size: decoded as the folder
  reader decodes, :func:`nsh_jax.image_folder.read_images` -- a square image of at most
  ``dataset.image_size`` is kept, any other resized on its shorter side and centre-cropped);
* optionally ``classes.txt``: one label name per line, in label order.

The lists define the protocol: ``test.txt`` are the queries, ``database.txt`` the
database, ``train.txt`` the training images (in HashNet's lists these are database
images, and become those database rows: :mod:`nsh_jax.protocol`).  An image listed in
several lists is decoded once.  Errors are one line naming the list file and line (or
the image): a listed image that is missing or cannot be decoded, a line with the wrong
number of labels, a label that is not 0 or 1, an image without a label, an empty list.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from nsh_jax import image_folder
from nsh_jax.errors import DataError

__all__ = ["LISTS", "parse_list", "read_list_dataset", "read_words"]

LISTS = ("train.txt", "database.txt", "test.txt")


def parse_list(where: str, text: str, width: Optional[int] = None
               ) -> Tuple[List[str], np.ndarray]:
  """``(paths, labels uint8 [n, C])`` of one list file's ``text`` (``where`` names it in
  errors); ``width`` = ``C`` if known (``classes.txt``), else the first line's."""
  paths, rows = [], []
  for number, line in enumerate(text.splitlines(), 1):
    parts = line.split()
    if not parts:
      continue
    path, values = parts[0], parts[1:]
    if width is None:
      width = len(values)
    if len(values) != width:
      raise DataError(f"{where} line {number}: {path} has {len(values)} labels, expected "
                      f"{width}")
    bad = [v for v in values if v not in ("0", "1")]
    if bad:
      raise DataError(f"{where} line {number}: label {bad[0]!r} of {path} is not 0 or 1")
    row = np.asarray([v == "1" for v in values], np.uint8)
    if not row.any():
      raise DataError(f"{where} line {number}: {path} has no label (every value is 0); "
                      f"leave such images out of the list")
    paths.append(path)
    rows.append(row)
  if not paths:
    raise DataError(f"{where} lists no images")
  return paths, np.stack(rows)


def read_list_dataset(path: str, size: int) -> Tuple[Dict[str, tuple], Optional[List[str]]]:
  """``({'train'|'database'|'test': (images uint8 [n, s, s, 3], labels [n, C], paths)},
  class names or None)`` of the lists and images under ``path``."""
  files = dict(image_folder.list_image_files(path, extra=LISTS + ("classes.txt",)))
  text = lambda name: files[name]().decode("utf-8", errors="replace")
  missing = [name for name in LISTS if name not in files]
  if missing:
    raise DataError(f"{path} has no {missing[0]} (HashNet lists: train.txt, database.txt, "
                    f"test.txt with lines 'relative/path.jpg 0 1 0 ...', and the images)")
  classes = ([c.strip() for c in text("classes.txt").splitlines() if c.strip()]
             if "classes.txt" in files else None)
  lists = {}
  for name in LISTS:
    width = len(classes) if classes else (lists["train.txt"][1].shape[1] if lists else None)
    lists[name] = parse_list(f"{path}/{name}", text(name), width)
    for number, p in enumerate(lists[name][0], 1):
      if p not in files:
        raise DataError(f"{path}/{name} line {number}: {p} is not in {path}")
  # Each listed image decoded once, all in one call: one common size for every split.
  unique = sorted({p for paths, _ in lists.values() for p in paths})
  line = {}  # a bad image is named by the first list line that lists it
  for name in reversed(LISTS):
    line.update({p: f"{path}/{name} line {i}: {p}"
                 for i, p in reversed(list(enumerate(lists[name][0], 1)))})
  images, _, _ = image_folder.read_images([(p, files[p]()) for p in unique], size,
                                          label=line.__getitem__)
  row = {p: i for i, p in enumerate(unique)}
  out = {}
  for name in LISTS:
    paths, labels = lists[name]
    out[name[:-len(".txt")]] = (images[[row[p] for p in paths]], labels, paths)
  return out, classes


def read_words(path: str) -> Dict[str, List[str]]:
  """``{relative image path: its label names}`` from whatever HashNet lists ``path`` (a
  directory or archive, or ``archive/inner/folder``: paths then relative to that folder)
  holds; ``{}`` without lists.  Names from ``classes.txt``, else ``label <i>``.  What the
  photo index prints beside each hit."""
  root, inner = image_folder.split_inner(os.path.expanduser(path))
  files = image_folder.read_named_files(root, LISTS + ("classes.txt",))
  decode = lambda name: files[name].decode("utf-8", errors="replace")
  classes = ([c.strip() for c in decode("classes.txt").splitlines() if c.strip()]
             if "classes.txt" in files else None)
  words = {}
  for name in LISTS:
    if name in files:
      paths, labels = parse_list(f"{root}/{name}", decode(name),
                                 len(classes) if classes else None)
      for p, row in zip(paths, labels):
        key = (p[len(inner):] if p.startswith(inner) else  # under archive/inner/
               p.rsplit("/", 1)[-1] if p + "/" == inner else None)  # archive/inner/file.jpg
        if key is not None:
          words[key] = [classes[i] if classes else f"label {i}" for i in np.flatnonzero(row)]
  return words
