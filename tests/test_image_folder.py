"""Image folders as datasets, the paper's split with validation queries, and leakage."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import base
from helpers import TINY, dataset_config, run_main
from nsh_jax import image_folder, input_pipeline, protocol
from nsh_jax.errors import DataError

CLASSES = ("cat", "dog", "fox")


def _png(value: int, size=(12, 12)) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full(size[::-1] + (3,), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _files(per_split=None, sizes=None):
  """``{relative path: bytes}``: each image a flat colour that encodes its split, class
  and index (so a test can tell exactly which image went where)."""
  per_split = per_split or {"train": 8, "test": 4}
  out = {}
  for s_i, (split, n) in enumerate(per_split.items()):
    for c_i, c in enumerate(CLASSES):
      for i in range(n):
        size = (sizes or {}).get((split, c, i), (12, 12))
        out[f"{split}/{c}/{i:03d}.png"] = _png(100 * s_i + 30 * c_i + i, size)
  return out


def _write(tmp_path, files, kind, name="data"):
  if kind == "dir":
    root = tmp_path / name
    for rel, data in files.items():
      p = root / rel
      p.parent.mkdir(parents=True, exist_ok=True)
      p.write_bytes(data)
    return str(root)
  if kind == "zip":
    path = str(tmp_path / f"{name}.zip")
    with zipfile.ZipFile(path, "w") as z:
      for rel, data in files.items():
        z.writestr(rel, data)
    return path
  path = str(tmp_path / f"{name}.{kind}")
  with tarfile.open(path, "w:" + {"tar.xz": "xz", "tar.gz": "gz", "tar": ""}[kind]) as t:
    for rel, data in files.items():
      info = tarfile.TarInfo(rel)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return path


def _config(path, **dataset):
  return dataset_config(f"folder:{path}", 16, **dataset)


@pytest.mark.parametrize("kind", ["dir", "zip", "tar.xz", "tar.gz", "tar"])
def test_every_container_reads_the_same_dataset(tmp_path, kind):
  s = input_pipeline.load(_config(_write(tmp_path, _files(), kind), shuffle_database=False))
  assert s.class_names == CLASSES and s.num_classes == 3
  assert s.train_images.shape == (24, 12, 12, 3) and s.query_images.shape == (12, 12, 12, 3)
  np.testing.assert_array_equal(s.train_labels, np.repeat(np.arange(3), 8))
  # train/dog/005.png is colour 0 + 30 + 5
  assert s.db_names[8 + 5] == "train/dog/005.png" and s.db_images[8 + 5, 0, 0, 0] == 35


def test_archive_with_one_top_folder_and_other_files(tmp_path):
  files = {f"cifar/{k}": v for k, v in _files().items()}
  files["cifar/README.txt"] = b"not an image"
  s = input_pipeline.load(_config(_write(tmp_path, files, "tar.xz")))
  assert s.class_names == CLASSES and s.train_images.shape[0] == 24


def test_mixed_sizes_are_resized_and_centre_cropped(tmp_path):
  sizes = {("train", "cat", 0): (40, 20), ("test", "fox", 1): (30, 30)}
  s = input_pipeline.load(_config(_write(tmp_path, _files(sizes=sizes), "dir"),
                                  shuffle_database=False))
  assert s.train_images.shape[1:] == (16, 16, 3) and s.query_images.shape[1:] == (16, 16, 3)
  assert s.train_images[0, 8, 8, 0] == 0 and s.query_images[4 * 2 + 1, 8, 8, 0] == 100 + 60 + 1
  img = image_folder.decode("x.png", _png(7, (64, 32)), 16)  # 64x32 -> 32x16 -> centre 16x16
  assert img.shape == (16, 16, 3) and np.all(img == 7)


def _broken(kind):
  files = _files()
  if kind == "corrupt":
    files["train/dog/003.png"] = b"\x89PNG broken"
  elif kind == "missing_class":
    files = {k: v for k, v in files.items() if not k.startswith("test/fox/")}
  elif kind == "no_images":
    files = {"train/cat/notes.txt": b"x"}
  return files


@pytest.mark.parametrize("kind,expect", [
    ("corrupt", "cannot decode image .*train/dog/003.png"),
    ("missing_class", "test/fox/ is missing or empty"),
    ("no_images", "no images in"),
])
def test_bad_folders_are_one_line_naming_the_file(tmp_path, kind, expect):
  with pytest.raises(DataError, match=expect) as e:
    input_pipeline.load(_config(_write(tmp_path, _broken(kind), "dir")))
  assert "\n" not in str(e.value)


def test_empty_class_folder_and_bad_archives(tmp_path):
  root = _write(tmp_path, _files(), "dir")
  os.makedirs(os.path.join(root, "train", "emu"))
  with pytest.raises(DataError, match="train/emu/ has no images"):
    input_pipeline.load(_config(root))
  fake = tmp_path / "fake.tar.xz"
  fake.write_bytes(b"this is not xz")
  with pytest.raises(DataError, match="fake.tar.xz is not a readable tar archive"):
    input_pipeline.load(_config(str(fake)))
  fake_zip = tmp_path / "fake.zip"
  fake_zip.write_bytes(b"PK nope")
  with pytest.raises(DataError, match="fake.zip is not a readable .zip"):
    input_pipeline.load(_config(str(fake_zip)))
  with pytest.raises(DataError, match="not found"):
    input_pipeline.load(_config(str(tmp_path / "nowhere")))
  with pytest.raises(DataError, match="no test/ folder"):
    input_pipeline.load(_config(_write(tmp_path, _files({"train": 3}), "dir", "only_train")))


@pytest.mark.slow
def test_folder_end_to_end_through_main(tmp_path):
  # One container through main.py: every kind reads the same dataset (tested above).
  path = _write(tmp_path, _files({"train": 16, "test": 4}), "zip")
  res = run_main(TINY + [f"--config.dataset.name=folder:{path}", "--config.train.steps=2",
                         "--config.eval.top_k=10", f"--workdir={tmp_path / 'run'}"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert "database 48 images (12x12), 3 classes" in res.stdout
  import json
  m = json.load(open(tmp_path / "run" / "metrics.json"))
  assert m["class_names"] == list(CLASSES) and m["split_sizes"]["database"] == 48
  assert m["config"]["dataset"]["name"] == f"folder:{path}" and m["code_version"]["package"]


@pytest.mark.slow
def test_corrupt_image_through_main_is_one_line(tmp_path):
  path = _write(tmp_path, _broken("corrupt"), "zip")
  res = run_main(TINY + [f"--config.dataset.name=folder:{path}", f"--workdir={tmp_path / 'r'}"])
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  assert res.returncode == 2 and len(lines) == 1 and "train/dog/003.png" in lines[0], res.stderr


# ------------------------------------------------------------------ the paper's split


def _ids(n, offset):
  """Images whose pixel (0, 0) holds a unique id (two uint8 channels)."""
  ids = np.arange(offset, offset + n)
  x = np.zeros((n, 2, 2, 3), np.uint8)
  x[:, 0, 0, 0], x[:, 0, 0, 1] = ids // 256, ids % 256
  return x


def _id_of(images):
  return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]


def _paper(split_seed=0, val=10, shuffle=True):
  ds = base.get_config().dataset
  ds.protocol, ds.split_seed, ds.queries_per_class, ds.train_per_class = "paper", split_seed, 5, 20
  ds.val_queries_per_class, ds.shuffle_database = val, shuffle
  tr_y, te_y = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 15)
  return protocol.make_splits(ds, (_ids(200, 0), tr_y), (_ids(60, 1000), te_y), 4)


def test_paper_split_is_balanced_disjoint_and_seeded():
  s = _paper()
  assert len(s.query_labels) == 20 and len(s.db_labels) == 200 + 60 - 20
  assert np.all(np.bincount(s.query_labels) == 5) and np.all(np.bincount(s.train_labels) == 20)
  assert np.all(np.bincount(s.db_labels[s.val_rows]) == 10)
  q, db, tr = _id_of(s.query_images), _id_of(s.db_images), _id_of(s.train_images)
  val = db[s.val_rows]
  assert np.all(q >= 1000) and not set(q) & set(db)  # queries come from test, never the database
  assert set(tr) <= set(db) and not set(val) & set(tr)  # training in the database, val outside it
  np.testing.assert_array_equal(db[s.train_rows], tr)
  np.testing.assert_array_equal(s.db_labels, np.where(db >= 1000, (db - 1000) // 15, db // 50))
  again, other = _paper(), _paper(split_seed=1)
  for a, b in ((s.query_images, again.query_images), (s.db_images, again.db_images),
               (s.train_images, again.train_images)):
    np.testing.assert_array_equal(a, b)
  assert set(_id_of(other.train_images)) != set(tr) and set(_id_of(other.query_images)) != set(q)
  vq, vdb = protocol.validation_view(s, db)
  assert len(vq) == 40 and len(vdb) == 200 and not set(vq) & set(vdb)


def test_database_order_is_label_agnostic_and_optional():
  s, kept = _paper(), _paper(shuffle=False)
  assert not np.array_equal(_id_of(s.db_images), _id_of(kept.db_images))  # shuffled
  assert len(set(s.db_labels[:20])) >= 3  # classes mixed from the first rows on
  assert sorted(_id_of(s.db_images)) == sorted(_id_of(kept.db_images))
  np.testing.assert_array_equal(_id_of(kept.train_images), _id_of(s.train_images))


def test_standard_protocol_validation_comes_out_of_training():
  ds = base.get_config().dataset
  ds.val_queries_per_class = 3
  tr_y = np.repeat(np.arange(2), 10)
  s = protocol.make_splits(ds, (_ids(20, 0), tr_y), (_ids(4, 500), np.array([0, 1, 0, 1])), 2)
  db, tr, val = _id_of(s.db_images), _id_of(s.train_images), _id_of(s.db_images)[s.val_rows]
  assert len(db) == 20 and len(tr) == 14 and len(val) == 6 and not set(val) & set(tr)
  np.testing.assert_array_equal(tr, np.setdiff1d(np.arange(20), val))  # original order kept


@pytest.mark.slow
def test_no_leakage_labels_and_queries_do_not_reach_the_database_codes(tmp_path):
  """Permuting the training labels, or replacing every query image, leaves the trained
  database codes bit-identical: labels never reach the loss (NSH is unsupervised) and
  the queries never reach training or the quantizer."""
  from helpers import tiny_config
  from nsh_jax import retrieval, train
  rng = np.random.default_rng(0)
  data = dict(train_images=rng.integers(0, 255, (64, 16, 16, 3)).astype(np.uint8),
              train_labels=rng.integers(0, 4, 64),
              test_images=rng.integers(0, 255, (8, 16, 16, 3)).astype(np.uint8),
              test_labels=rng.integers(0, 4, 8))
  variants = {"base": {}, "labels": {"train_labels": rng.permutation(data["train_labels"])},
              "queries": {"test_images": rng.integers(0, 255, (8, 16, 16, 3)).astype(np.uint8)}}
  codes = {}
  for name, change in variants.items():
    path = str(tmp_path / f"{name}.npz")
    np.savez(path, **{**data, **change})
    c = tiny_config(steps=3)
    c.dataset.name, c.dataset.image_size, c.eval.top_k = f"npz:{path}", 16, 10
    c.train.diagnostics = True  # labels reach the logged diagnostics, never the update
    wd = str(tmp_path / name)
    train.train_and_evaluate(c, wd, log=lambda *a: None)
    codes[name] = retrieval.load_index(f"{wd}/codes/database_16bit.npz")["codes"]
  np.testing.assert_array_equal(codes["labels"], codes["base"])
  np.testing.assert_array_equal(codes["queries"], codes["base"])
