"""Evaluation protocols: which images train, which are queries, which form the database.

A labelled set (``train`` and ``test`` splits, optionally a ``database`` split)
becomes a :class:`Splits` by ``dataset.protocol``, seeded by ``dataset.split_seed``
(independent of the training seed ``config.seed``):

* ``'standard'`` -- the test split are the queries; the database is the
  ``database`` split if there is one, else the train split; the encoder trains on
  the train split (whose images, where they are database images by file name, as in
  the HashNet lists, are those database rows).
* ``'paper'`` -- the unsupervised-hashing protocol of NSH / CIBHash / BiHalf on
  CIFAR-10: ``queries_per_class`` queries per class from the test split; the rest
  of the test split, the train split (and a ``database`` split) form the database;
  ``train_per_class`` training images per class drawn from the database.

**Validation queries** (``val_queries_per_class``; for multi-label data, which has no
classes to balance, ``val_queries`` drawn uniformly; ``-1``, the default, takes a tenth of
the eligible images, at most 20 per class or 500 in all; ``0`` none): drawn by the split
seed from the database rows outside the training images, or, where every database row
trains, from the training images, which then no longer train -- never from the test
queries.  They are
evaluated against the database without them (:func:`validation_view`).  Model selection
reads these; the test queries are for the final table.

**Ties.**  Sign codes put many database images at one Hamming distance from a query.
Folders are read class by class, so a tie broken by position would favour a class: ties
are broken by a seeded random rank per database image (``Splits.db_keys``, drawn by the
split seed, label-agnostic), whatever the storage order.  By default the database is also
stored in that order (``shuffle_database``: key = position).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from nsh_jax.errors import DataError

__all__ = ["Splits", "PROTOCOLS", "make_splits", "balanced_pick", "query_view", "validation_view",
           "training_query_rows"]

PROTOCOLS = ("standard", "paper")


@dataclasses.dataclass
class Splits:
  """uint8 NHWC images and labels (int ``[n]`` or multi-hot ``[n, C]``) of one protocol.

  ``train_rows`` (if known): database row of each training image;
  ``val_rows``: database rows that are validation queries (none: ``None``);
  ``class_names``: label ``i`` is ``class_names[i]``; ``db_names``: file of each
  database row, where the data came from files; ``db_keys``: each database row's tie key
  (a seeded random rank: the tie rule, see the module docstring).
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  query_images: np.ndarray
  query_labels: np.ndarray
  db_images: np.ndarray
  db_labels: np.ndarray
  num_classes: int
  class_names: Optional[Tuple[str, ...]] = None
  train_rows: Optional[np.ndarray] = None
  val_rows: Optional[np.ndarray] = None
  db_names: Optional[Tuple[str, ...]] = None
  db_keys: Optional[np.ndarray] = None

  @property
  def multi_label(self) -> bool:
    return self.train_labels.ndim == 2


def balanced_pick(labels: np.ndarray, per_class: int, rng, among=None) -> np.ndarray:
  """``per_class`` rows of each class (sorted), drawn without replacement from ``among``
  (default: all rows)."""
  among = np.arange(len(labels)) if among is None else np.asarray(among)
  picks = []
  for c in np.unique(labels):
    members = among[labels[among] == c]
    if len(members) < per_class:
      raise DataError(f"class {c} has {len(members)} images to draw from, fewer than "
                      f"{per_class} per class")
    picks.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(picks))


def _has(labels: np.ndarray, rows: np.ndarray, per_class: int) -> bool:
  counts = np.bincount(labels[rows], minlength=int(labels.max()) + 1)
  return bool(np.all(counts[np.unique(labels)] >= per_class))


def _rows_of(names: Optional[Sequence[str]], among: Optional[Sequence[str]]):
  """Positions of ``names`` in ``among`` when every one is there (else ``None``)."""
  if names is None or among is None:
    return None
  where = {n: i for i, n in enumerate(among)}
  return np.asarray([where[n] for n in names]) if all(n in where for n in names) else None


def _paper(ds, train, test, database, names, rng):
  """The paper protocol: ``(queries, database, database names, train_rows)``."""
  (tr_x, tr_y), (te_x, te_y) = train, test
  q = balanced_pick(te_y, int(ds.queries_per_class), rng)
  rest = np.setdiff1d(np.arange(len(te_y)), q)
  parts = [(tr_x, tr_y, names.get("train")), (te_x[rest], te_y[rest],
           None if names.get("test") is None else [names["test"][i] for i in rest])]
  if database is not None:
    parts.append(tuple(database) + (names.get("database"),))
  db = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  db_n = None if any(p[2] is None for p in parts) else [n for p in parts for n in p[2]]
  return (te_x[q], te_y[q]), db, db_n, balanced_pick(db[1], int(ds.train_per_class), rng)


def _standard(train, test, database, names):
  """The standard protocol: the test split queries the ``database`` split (else the train
  split); training images that are database images (by file name) are database rows."""
  if database is None:
    return test, train, names.get("train"), np.arange(len(train[1]))
  return test, database, names.get("database"), _rows_of(names.get("train"),
                                                         names.get("database"))


# Validation queries when the config does not say (``-1``): a tenth of the eligible rows,
# at most this many per class (single-label) or in all (multi-label).
AUTO_PER_CLASS, AUTO_TOTAL = 20, 500


def _auto(per: int, total: int, db_y, eligible):
  """``(per, total)`` with ``-1`` resolved against ``eligible`` database rows."""
  if db_y.ndim == 2:
    return 0, (min(AUTO_TOTAL, len(eligible) // 10) if total < 0 else total)
  counts = np.bincount(db_y[eligible], minlength=int(db_y.max()) + 1)[np.unique(db_y)]
  smallest = int(counts.min()) if len(eligible) else 0
  return (min(AUTO_PER_CLASS, smallest // 10) if per < 0 else per), 0


def _validation(ds, db_y, train_rows, rng):
  """``(val_rows, train_rows)``: validation queries from the database outside training, or,
  where every database row trains, from the training rows (which then no longer train)."""
  multi = db_y.ndim == 2
  per, total = int(ds.val_queries_per_class), int(ds.get("val_queries", 0))
  if multi and per > 0:
    raise DataError("dataset.val_queries_per_class draws per class; multi-label data has no "
                    "classes to balance: set dataset.val_queries (a number of queries) instead")
  outside = (np.arange(len(db_y)) if train_rows is None
             else np.setdiff1d(np.arange(len(db_y)), train_rows))
  if per < 0 or total < 0:  # auto: from outside training if there is enough, else training
    source = outside if len(outside) >= len(db_y) // 10 or train_rows is None else train_rows
    per, total = _auto(per, total, db_y, source)
  if not (total if multi else per):
    return None, train_rows
  if multi:  # uniform over rows: label-agnostic
    pick = lambda among: np.sort(rng.choice(among, total, replace=False))
    enough = lambda among: len(among) >= total
  else:
    pick = lambda among: balanced_pick(db_y, per, rng, among)
    enough = lambda among: len(among) > 0 and _has(db_y, among, per)
  if enough(outside):
    return pick(outside), train_rows
  if train_rows is not None and enough(train_rows):
    val_rows = pick(train_rows)
    return val_rows, train_rows[~np.isin(train_rows, val_rows)]
  want = f"{total} validation queries" if multi else f"{per} validation queries per class"
  raise DataError(f"too few database images outside training for {want}")


def make_splits(ds, train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                num_classes: int, database: Optional[tuple] = None,
                class_names: Optional[Sequence[str]] = None,
                names: Optional[dict] = None) -> Splits:
  """:class:`Splits` of ``(images, labels)`` pairs under ``ds`` = ``config.dataset``
  (``protocol``, ``split_seed``, ``queries_per_class``, ``train_per_class``,
  ``val_queries_per_class`` / ``val_queries``, ``shuffle_database``); ``names`` optionally
  maps ``'train'``/``'test'``/``'database'`` to each image's file name."""
  if ds.protocol not in PROTOCOLS:
    raise DataError(f"config.dataset.protocol={ds.protocol!r} is not one of {PROTOCOLS}")
  names = names or {}
  rng = np.random.default_rng([int(ds.split_seed), 0x5EED])
  if ds.protocol == "paper":
    if np.asarray(train[1]).ndim == 2:
      raise DataError("dataset.protocol='paper' draws per class; multi-label data needs "
                      "'standard' (its lists say which images are queries)")
    (q_x, q_y), (db_x, db_y), db_n, train_rows = _paper(ds, train, test, database, names, rng)
  else:
    (q_x, q_y), (db_x, db_y), db_n, train_rows = _standard(train, test, database, names)
  db_x, db_y = np.asarray(db_x), np.asarray(db_y).astype(np.int32)
  val_rows, train_rows = _validation(ds, db_y, train_rows, rng)
  # The tie rule: a seeded random rank per database image, label-agnostic.  Shuffled, the
  # rows are stored in that order (key = position), so ties fall the same way either way.
  perm = rng.permutation(len(db_y))  # new row r holds old row perm[r]
  where = np.empty_like(perm)
  where[perm] = np.arange(len(perm))
  keys = where
  if ds.shuffle_database:
    keys = np.arange(len(perm))
    db_x, db_y = db_x[perm], db_y[perm]
    db_n = None if db_n is None else [db_n[i] for i in perm]
    train_rows = None if train_rows is None else where[train_rows]
    val_rows = None if val_rows is None else np.sort(where[val_rows])
  if train_rows is not None:
    t_x, t_y = db_x[train_rows], db_y[train_rows]
  else:
    t_x, t_y = train[0], np.asarray(train[1]).astype(np.int32)
  return Splits(t_x, t_y, q_x, np.asarray(q_y).astype(np.int32), db_x, db_y, int(num_classes),
                tuple(class_names) if class_names is not None else None, train_rows,
                val_rows, tuple(db_n) if db_n is not None else None, keys)


def query_view(rows: np.ndarray, db_values: np.ndarray):
  """``(db_values[rows], db_values without those rows)``: database rows taken out as queries,
  so that no query retrieves itself."""
  keep = np.ones(len(db_values), bool)
  keep[rows] = False
  return db_values[rows], db_values[keep]


def validation_view(splits: Splits, db_values: np.ndarray):
  """``(validation queries, database without them)`` rows of ``db_values`` (codes,
  embeddings or labels of the database), or ``None`` without validation queries."""
  if splits.val_rows is None:
    return None
  return query_view(splits.val_rows, db_values)


def training_query_rows(splits: Splits, seed: int) -> Optional[np.ndarray]:
  """Database rows of as many training images as there are validation queries (all of them,
  if fewer), drawn with ``seed``: the memorisation check's queries.  ``None`` where the
  training images are not database rows or there are no validation queries to compare with."""
  if splits.train_rows is None or splits.val_rows is None or not len(splits.train_rows):
    return None
  n = min(len(splits.val_rows), len(splits.train_rows))
  rng = np.random.default_rng([int(seed), 0x3E3])
  return np.sort(rng.choice(np.asarray(splits.train_rows), n, replace=False))
