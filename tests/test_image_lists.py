"""Multi-label HashNet lists (directory and archive), their one-line errors, the multi-label
validation split, and the list configs (coco, nus_wide, corel5k) end to end."""

import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from helpers import dataset_config, run_main


def make_lists(root, n_db=24, n_test=6, labels=4, seed=0, size=(40, 28), classes=True):
  """A HashNet list folder: ``database/`` images that are also the training images, ``test/``
  queries, multi-hot labels with at least one 1 per image; returns the label arrays."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("database", n_db), ("test", n_test)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    y = (rng.random((n, labels)) < 0.4).astype(np.uint8)
    y[np.arange(n), rng.integers(0, labels, n)] = 1
    lines = []
    for i in range(n):
      name = f"{split}/{i:03d}.png"
      Image.fromarray(rng.integers(0, 256, size[::-1] + (3,)).astype(np.uint8)).save(
          os.path.join(root, name))
      lines.append(name + " " + " ".join(map(str, y[i])))
    out[split] = (lines, y)
  for name, split in (("train.txt", "database"), ("database.txt", "database"),
                      ("test.txt", "test")):
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(out[split][0]) + "\n")
  if classes:
    with open(os.path.join(root, "classes.txt"), "w") as f:
      f.write("\n".join(f"word{i}" for i in range(labels)) + "\n")
  return out["database"][1], out["test"][1]


def _archive(root, kind, dest):
  if kind == "zip":
    with zipfile.ZipFile(dest, "w") as z:
      for d, _, files in os.walk(root):
        for f in files:
          z.write(os.path.join(d, f), os.path.join("lists", os.path.relpath(os.path.join(d, f),
                                                                            root)))
  else:
    with tarfile.open(dest, "w:xz") as t:
      t.add(root, arcname="lists")
  return dest


@pytest.mark.parametrize("kind", ["dir", "tar.xz", "zip"])
def test_list_reader_reads_directories_and_archives_alike(tmp_path, kind):
  from nsh_jax import image_lists
  root = str(tmp_path / "lists")
  db_y, test_y = make_lists(root)
  path = root if kind == "dir" else _archive(root, kind, str(tmp_path / f"l.{kind}"))
  data, classes = image_lists.read_list_dataset(path, 32)
  assert classes == [f"word{i}" for i in range(4)]
  np.testing.assert_array_equal(data["database"][1], db_y)
  np.testing.assert_array_equal(data["test"][1], test_y)
  np.testing.assert_array_equal(data["train"][0], data["database"][0])  # one decode, same pixels
  assert data["test"][2][0] == "test/000.png" and data["database"][0].shape == (24, 32, 32, 3)
  # 40 x 28 images: the shorter side to 32, then the centre crop (the folder reader's rule)
  from nsh_jax import image_folder
  with open(os.path.join(root, "test", "001.png"), "rb") as f:
    want = image_folder.decode("x", f.read(), 32)
  np.testing.assert_array_equal(data["test"][0][1], want)


def _break(root, case):
  lines = open(os.path.join(root, "test.txt")).read().splitlines()
  if case == "missing":
    os.remove(os.path.join(root, "test", "002.png"))
  elif case == "corrupt":
    with open(os.path.join(root, "test", "002.png"), "wb") as f:
      f.write(b"not an image")
  elif case == "width":
    lines[2] = lines[2] + " 0"
  elif case == "value":
    lines[2] = lines[2][:-1] + "2"
  elif case == "no label":
    lines[2] = lines[2].split()[0] + " 0 0 0 0"
  elif case == "empty":
    lines = []
  with open(os.path.join(root, "test.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("case,expect", [
    ("missing", "test.txt line 3: test/002.png is not in"),
    ("corrupt", "test.txt line 3: test/002.png: not an image file Pillow can read"),
    ("width", "test.txt line 3: test/002.png has 5 labels, expected 4"),
    ("value", "test.txt line 3: label '2' of test/002.png is not 0 or 1"),
    ("no label", "test.txt line 3: test/002.png has no label"),
    ("empty", "test.txt lists no images"),
])
def test_bad_lists_are_one_line_naming_the_file_and_line(tmp_path, case, expect):
  from nsh_jax import errors, image_lists
  root = str(tmp_path / "lists")
  make_lists(root, classes=case != "width")
  _break(root, case)
  with pytest.raises(errors.DataError) as e:
    image_lists.read_list_dataset(root, 32)
  msg, code = errors.describe(e.value)
  assert code == 2 and "\n" not in msg and expect in msg, msg


def _list_config(path, **dataset):
  return dataset_config(f"lists:{path}", 32, **dataset)


def test_multi_label_validation_is_disjoint_seeded_and_label_agnostic(tmp_path):
  from nsh_jax import input_pipeline, protocol
  root = str(tmp_path / "lists")
  make_lists(root, n_db=40)
  s = input_pipeline.load(_list_config(root, val_queries=8))
  assert s.multi_label and len(s.val_rows) == 8 and s.train_labels.shape == (32, 4)
  # every database image trained: validation came out of training, never the test queries
  assert not set(s.val_rows) & set(s.train_rows)
  assert len(set(s.train_rows) | set(s.val_rows)) == 40
  names = set(s.db_names[r] for r in s.val_rows)
  assert all(n.startswith("database/") for n in names)
  vq, vd = protocol.validation_view(s, s.db_labels)
  assert vq.shape == (8, 4) and vd.shape == (32, 4)
  again = input_pipeline.load(_list_config(root, val_queries=8))
  np.testing.assert_array_equal(again.val_rows, s.val_rows)
  other = input_pipeline.load(_list_config(root, val_queries=8, split_seed=1))
  assert set(other.db_names[r] for r in other.val_rows) != names
  # labels do not choose: other labels on the same files, the same validation files
  lines = open(os.path.join(root, "database.txt")).read().splitlines()
  flipped = [ln.split()[0] + " " + " ".join("1" for _ in ln.split()[1:]) for ln in lines]
  for name in ("database.txt", "train.txt"):
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(flipped) + "\n")
  relabelled = input_pipeline.load(_list_config(root, val_queries=8))
  assert set(relabelled.db_names[r] for r in relabelled.val_rows) == names
  with pytest.raises(Exception, match="val_queries"):
    input_pipeline.load(_list_config(root, val_queries_per_class=2))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["coco", "nus_wide"])
def test_list_configs_run_end_to_end_on_a_tiny_fixture(tmp_path, config):
  root = str(tmp_path / "lists")
  make_lists(root, n_db=48, n_test=8)
  archive = _archive(root, "tar.xz", str(tmp_path / "lists.tar.xz"))
  res = run_main([f"--config=configs/{config}.py", f"--config.dataset.data_dir={archive}",
                  "--config.dataset.image_size=32", "--config.dataset.val_queries=6",
                  "--config.features.views=2", "--config.features.chunk=16",
                  f"--config.features.cache_dir={tmp_path / 'cache'}",
                  "--config.train.steps=2", "--config.train.batch_size=16",
                  "--config.train.log_every=1", "--config.model.head_hidden=16",
                  "--config.eval.top_k=20", "--config.eval.plots=False",
                  "--config.eval.baselines=False", f"--workdir={tmp_path / 'run'}"])
  # At 32 px Lite2's pooled features are all zero: training must survive that too.
  assert res.returncode == 0, res.stderr[-3000:]
  assert "validation 6 queries" in res.stdout and "val mAP@20 64-bit:" in res.stdout
  import json
  m = json.load(open(tmp_path / "run" / "metrics.json"))
  assert m["split_sizes"] == {"train": 42, "query": 8, "database": 48, "validation": 6}
  assert m["class_names"] == [f"word{i}" for i in range(4)]
  shutil.rmtree(tmp_path / "cache")


def test_photo_index_prints_each_hits_words_and_frames_shared_labels(tmp_path, monkeypatch):
  """Index and search a list dataset's photos (an encoder of pixels, no training): every
  hit carries its words from the lists, the query its own, and the gallery frames a hit
  green exactly when it shares a word with the query."""
  from nsh_jax import image_index, plots
  root = str(tmp_path / "lists")
  db_y, test_y = make_lists(root, n_db=20, n_test=4)
  archive = _archive(root, "tar.xz", str(tmp_path / "lists.tar.xz"))
  proj = np.random.default_rng(0).normal(size=(32 * 32 * 3, 16)).astype(np.float32)
  encode = lambda images: images.reshape(len(images), -1).astype(np.float32) @ proj
  codes_for = lambda emb, b: emb[:, :b]
  image_index.build(archive, str(tmp_path / "index"), encode, codes_for, [16], "m", 32, "sign",
                    log=lambda *a: None)
  frames = []
  monkeypatch.setattr(plots, "gallery", lambda path, q, results, *a, **k: frames.extend(
      [[c for _, _, c in row] for row in results]))
  lines = []
  out = image_index.search(str(tmp_path / "index"), archive + "/test", encode, codes_for, 16,
                           "m", k=5, output=str(tmp_path / "hits.json"), log=lines.append)
  word = lambda y: [f"word{i}" for i in np.flatnonzero(y)]
  for i, q in enumerate(out["queries"]):
    assert q["query"] == f"{i:03d}.png" and q["words"] == word(test_y[i])
    for h, framed in zip(q["results"], frames[i]):
      split, num = h["file"].split("/")
      want = word((db_y if split == "database" else test_y)[int(num[:3])])
      assert h["words"] == want
      assert framed == bool(set(want) & set(q["words"]))
  assert lines[0] == f"query 000.png:  [{', '.join(word(test_y[0]))}]"
  assert lines[1].endswith("]") and "(Hamming " in lines[1]
  # one file of the archive as the query: its words too
  one = image_index.search(str(tmp_path / "index"), archive + "/test/002.png", encode,
                           codes_for, 16, "m", k=3, output=str(tmp_path / "one.json"),
                           log=lambda *a: None)
  assert one["queries"][0]["words"] == word(test_y[2])
