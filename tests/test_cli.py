"""The command line after training: evaluate, encode, search (codes and images)."""

import json
import os

import numpy as np
import pytest

from helpers import EVAL_EXTRAS, TINY, run_main, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cli") / "run")
  args = TINY + ["--config.train.steps=4", f"--workdir={workdir}"]
  res = run_main(args + EVAL_EXTRAS)  # the plots test_retrieval_plot_is_written reads
  assert res.returncode == 0, res.stderr[-2000:]
  return workdir, args


def _brute_force(q_packed, db_packed, k):
  q = np.unpackbits(q_packed, axis=1).astype(np.int32)
  d = np.unpackbits(db_packed, axis=1).astype(np.int32)
  dist = (q[:, None, :] != d[None, :, :]).sum(-1)
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(dist, order, 1), order


@pytest.mark.slow
def test_evaluate_writes_metrics_and_plots(trained):
  workdir, args = trained
  path = os.path.join(workdir, "metrics.json")
  trained_metrics = json.load(open(path))
  assert [h["step"] for h in trained_metrics["history"]] == [2, 4]
  json.dump({**trained_metrics, "by_bits": {}}, open(path, "w"))  # must be written again
  if os.path.exists(os.path.join(workdir, "plots/pr_curve.png")):
    os.remove(os.path.join(workdir, "plots/pr_curve.png"))
  res = run_main(args + EVAL_EXTRAS + ["--mode=evaluate"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert "restored checkpoint 4" in res.stdout and "mAP@100 16-bit:" in res.stdout
  m = json.load(open(path))
  # The training run's record survives a re-evaluation.
  assert m["history"] == trained_metrics["history"]
  assert m["train_seconds"] == trained_metrics["train_seconds"]
  # The test queries' line (the validation queries' line, "val mAP@...", comes first).
  printed = float(next(line for line in res.stdout.splitlines()
                       if line.startswith("mAP@100 16-bit:")).split()[2])
  # Recomputed independently from the codes files the evaluation wrote.
  from nsh_jax import retrieval
  from test_metrics_retrieval import ref_ap
  q, db = (retrieval.load_index(os.path.join(workdir, "codes", f"{s}_16bit.npz"))
           for s in ("query", "database"))
  signs = lambda packed: np.unpackbits(packed, axis=1)[:, :16].astype(np.float64) * 2 - 1
  # Equal distances are ranked by the protocol's seeded keys (the tie rule).
  from nsh_jax import input_pipeline
  keys = input_pipeline.load(tiny_config(4)).db_keys
  want = ref_ap(signs(q["codes"]), signs(db["codes"]), q["labels"], db["labels"], 100, keys)
  assert abs(printed - want) < 1e-4 and abs(m["by_bits"]["16"]["map"] - want) < 1e-6
  assert set(m["baselines"]) == {"itq-pixels", "lsh-pixels"}  # also beside the model in the plots
  assert "itq-pixels mAP@100 16-bit:" in res.stdout
  for name in ("pr_curve.png", "precision_at_n.png", "tsne.png"):
    with open(os.path.join(workdir, "plots", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_encode_and_search_match_brute_force(trained, tmp_path):
  from nsh_jax import retrieval
  workdir, args = trained
  images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
  np.savez(tmp_path / "q.npz", images=images)
  # encode: the database split (default input) and a user's image file.
  res = run_main(args + ["--mode=encode", f"--output={tmp_path / 'db.npz'}"])
  assert res.returncode == 0, res.stderr[-2000:]
  db = retrieval.load_index(str(tmp_path / "db.npz"))
  trained_db = retrieval.load_index(os.path.join(workdir, "codes", "database_16bit.npz"))
  np.testing.assert_array_equal(db["codes"], trained_db["codes"])  # same checkpoint, same codes
  res = run_main(args + ["--mode=encode", f"--input={tmp_path / 'q.npz'}",
                         f"--output={tmp_path / 'q_codes.npz'}"])
  assert res.returncode == 0, res.stderr[-2000:]
  q = retrieval.load_index(str(tmp_path / "q_codes.npz"))
  assert q["codes"].shape == (12, 2) and q["bits"] == 16

  # search with query codes, and with query images (encoded by the checkpoint).
  want_d, want_i = _brute_force(q["codes"], db["codes"], 7)
  for query in ("q_codes.npz", "q.npz"):
    out = tmp_path / f"hits_{query}"
    res = run_main(args + ["--mode=search", f"--index={tmp_path / 'db.npz'}",
                           f"--query={tmp_path / query}", "--k=7", f"--output={out}"])
    assert res.returncode == 0, res.stderr[-2000:]
    hits = np.load(out)
    np.testing.assert_array_equal(hits["distances"], want_d)
    np.testing.assert_array_equal(hits["ids"], db["ids"][want_i])
    assert res.stdout.count("query ") == 10


@pytest.mark.slow
def test_search_refuses_damaged_or_mismatched_files(trained, tmp_path):
  """In-process (the one-line printing of such errors is main.py's, tested with bad configs)."""
  from configs import default
  from nsh_jax import errors, modes, retrieval
  workdir, args = trained
  db_path = os.path.join(workdir, "codes", "database_16bit.npz")
  bad = tmp_path / "bad.npz"
  data = open(db_path, "rb").read()
  bad.write_bytes(data[: len(data) // 2])
  other = tmp_path / "q32.npz"
  retrieval.save_index(str(other), np.zeros((3, 4), np.uint8), 32)
  for index, query, expect in ((str(bad), db_path, "bad.npz"),
                               (db_path, str(other), "32 bits"),
                               (db_path, str(tmp_path / "missing.npz"), "not found")):
    with pytest.raises(errors.USER_ERRORS) as e:
      modes.MODES.get("search")(default.get_config(), workdir,
                                {"index": index, "query": query, "k": 10})
    msg, code = errors.describe(e.value)
    assert code == 2 and "\n" not in msg and expect in msg, msg


@pytest.mark.slow
def test_encode_codes_with_the_fitted_quantizer_and_needs_it(trained, tmp_path):
  """The default config codes with ITQ fitted at evaluation: encode applies the saved
  rotation (the database codes above match), and says in one line when it is missing."""
  workdir, args = trained
  with np.load(os.path.join(workdir, "codes", "quantizer.npz")) as f:
    assert str(f["name"]) == "itq" and f["projection_16"].shape == (16, 16)
  moved = os.path.join(workdir, "codes", "quantizer.npz.away")
  os.rename(os.path.join(workdir, "codes", "quantizer.npz"), moved)
  try:
    res = run_main(args + ["--mode=encode", f"--output={tmp_path / 'db.npz'}"])
  finally:
    os.rename(moved, os.path.join(workdir, "codes", "quantizer.npz"))
  err = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert res.returncode == 2 and len(err) == 1 and "--mode=evaluate" in err[0], res.stderr[-2000:]


@pytest.mark.slow
def test_quantize_mode_reproduces_the_run_and_compares_quantizers(trained):
  """sign / ITQ / H2Q on the trained run: ITQ (the run's own quantizer) gives the run's
  mAP exactly, and sign codes the brute-force mAP of the saved embeddings' signs."""
  from test_metrics_retrieval import ref_ap
  workdir, args = trained
  res = run_main(args + ["--mode=quantize"])
  assert res.returncode == 0, res.stderr[-2000:]
  table = json.load(open(os.path.join(workdir, "quantize.json")))["16"]
  m = json.load(open(os.path.join(workdir, "metrics.json")))
  assert table["itq"] == pytest.approx(m["by_bits"]["16"]["map"], abs=1e-9)
  emb = np.load(os.path.join(workdir, "codes", "embeddings.npz"))
  want = ref_ap(emb["query"][:, :16], emb["database"][:, :16], emb["query_labels"],
                emb["database_labels"], 100)
  assert table["sign"] == pytest.approx(want, abs=1e-6)
  assert 0 < table["h2q"] <= 1 and "| 16 |" in res.stdout


@pytest.mark.slow
def test_evaluation_without_baselines_plots_or_h2q(trained, tmp_path):
  """What a table that computes its own baselines asks for: none per run, no plots, and
  --mode=quantize with only the quantizers named; the model's numbers unchanged."""
  import shutil
  workdir, args = trained
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("plots", "quantize.json"))
  off = [a for a in args if not a.startswith("--workdir")] + [
      f"--workdir={copy}", "--config.eval.baselines=False", "--config.eval.plots=False",
      "--config.eval.quantizers=('sign','itq')"]
  res = run_main(off + ["--mode=evaluate"])
  assert res.returncode == 0, res.stderr[-2000:]
  m = json.load(open(os.path.join(copy, "metrics.json")))
  assert "baselines" not in m and "itq-pixels" not in res.stdout
  assert not os.path.exists(os.path.join(copy, "plots"))
  full = json.load(open(os.path.join(workdir, "metrics.json")))
  assert m["by_bits"]["16"]["map"] == full["by_bits"]["16"]["map"]
  res = run_main(off + ["--mode=quantize"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert set(json.load(open(os.path.join(copy, "quantize.json")))["16"]) == {"sign", "itq"}
  res = run_main(off + ["--mode=quantize", "--config.eval.quantizers=('sign','pq')"])
  assert res.returncode == 2 and res.stderr.strip() == (
      "error: config.eval.quantizers has 'pq', not one of ('sign', 'h2q', 'itq', 'lsh')")


@pytest.mark.slow
def test_retrieval_plot_is_written(trained):
  from PIL import Image
  workdir, _ = trained
  with Image.open(os.path.join(workdir, "plots", "retrieval.png")) as im:
    w, h = im.size
  # 8 queries x (query + top 10): 11 cells of 1.2 in across, 8 rows of 1.3 in, 110 dpi
  assert im.format == "PNG" and 1000 < w < 1300 and 950 < h < 1200


def _photo_folder(root, images, start=0):
  from PIL import Image
  root.mkdir(exist_ok=True)
  for i, im in enumerate(images, start):
    Image.fromarray(im).save(root / f"img{i:04d}.png")
  return root


@pytest.mark.slow
def test_index_codes_equal_the_runs_database_codes_and_grow(trained, tmp_path):
  """A photo folder of the run's own database images gets the run's database codes; a
  grown folder encodes only the new files; unreadable files are skipped and counted."""
  from nsh_jax import input_pipeline, image_index, modes, retrieval
  workdir, _ = trained
  c = tiny_config()
  db = input_pipeline.load(c).db_images
  photos = _photo_folder(tmp_path / "photos", db[:300])
  out = str(tmp_path / "idx")
  index = modes.MODES.get("index")
  index(c, workdir, {"input": str(photos), "output": out})
  want = retrieval.load_index(os.path.join(workdir, "codes", "database_16bit.npz"))["codes"]
  got = retrieval.load_index(os.path.join(out, "codes_16bit.npz"))["codes"]
  np.testing.assert_array_equal(got, want[:300])
  _photo_folder(photos, db[300:310], start=300)
  (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  logs = []
  encode, digest = modes.trained_encoder(c, workdir)
  meta = image_index.build(str(photos), out, encode, lambda e, b: e[:, :b], [16], digest,
                           32, "itq", log=logs.append)
  assert "index: 11 new image file(s)" in logs[0] and meta["skipped"] == ["broken.jpg"]
  assert sum("skipped broken.jpg" in l for l in logs) == 1 and len(meta["files"]) == 310
  got = retrieval.load_index(os.path.join(out, "codes_16bit.npz"))["codes"]
  assert got.shape[0] == 310
  logs.clear()
  image_index.build(str(photos), out, encode, lambda e, b: e[:, :b], [16], digest, 32, "itq",
                    log=logs.append)
  assert "index: 0 new image file(s)" in logs[0]


@pytest.mark.slow
def test_search_by_image_prints_files_and_draws_the_gallery(trained, tmp_path):
  from PIL import Image
  from nsh_jax import input_pipeline
  workdir, args = trained
  db = input_pipeline.load(tiny_config()).db_images
  photos = _photo_folder(tmp_path / "photos", db[:40])
  res = run_main(args + ["--mode=index", f"--input={photos}"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert "index: 40/40 images" in res.stdout and "images/s" in res.stdout
  out = tmp_path / "hits.json"
  res = run_main(args + ["--mode=search", f"--query={photos / 'img0007.png'}", "--k=5",
                         f"--output={out}"])
  assert res.returncode == 0, res.stderr[-2000:]
  hits = json.load(open(out))["queries"][0]["results"]
  # itself at distance 0 (ties at 0 are broken by index order among equal codes)
  assert hits[0]["distance"] == 0 and {"file": "img0007.png", "distance": 0} in hits
  assert "img0007.png  (Hamming 0)" in res.stdout and len(hits) == 5
  with Image.open(tmp_path / "hits.png") as im:
    assert im.size[0] > im.size[1] > 50
  # one line each: a corrupt query, a wrong length, another model's index, an empty folder
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"nope")
  empty = tmp_path / "empty"
  empty.mkdir()
  other = tmp_path / "other_model"
  cases = [(["--mode=search", f"--query={bad}"], "bad.jpg"),
           (["--mode=search", f"--query={photos / 'img0001.png'}", "--bits=32"], "not 32-bit")]
  for extra, expect in cases:  # through main.py: the one line it prints
    res = run_main(args + extra)
    err = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 2 and len(err) == 1 and expect in err[0], (extra, res.stderr[-2000:])
  from nsh_jax import errors, modes
  for mode, options, where, expect in (  # in-process: the same errors, without a launch each
      ("index", {"input": str(empty), "output": str(other)}, workdir, "no image files"),
      ("search", {"query": str(photos / "img0001.png"), "index": os.path.join(workdir, "index"),
                  "k": 5}, str(tmp_path / "nowhere"), "no checkpoints")):
    with pytest.raises(errors.USER_ERRORS) as e:
      modes.MODES.get(mode)(tiny_config(), where, options)
    msg, code = errors.describe(e.value)
    assert code == 2 and "\n" not in msg and expect in msg, msg


def test_index_of_another_model_is_refused(tmp_path):
  from nsh_jax import image_index
  from nsh_jax.errors import DataError
  rng = np.random.default_rng(0)
  photos = _photo_folder(tmp_path / "p", rng.integers(0, 255, (5, 8, 8, 3)).astype(np.uint8))
  encode = lambda x: x.reshape(len(x), -1)[:, :16].astype(np.float32) - 127.5
  out = str(tmp_path / "idx")
  image_index.build(str(photos), out, encode, lambda e, b: e[:, :b], [16], "model-A", 8, "sign",
                    log=lambda *a: None)
  with pytest.raises(DataError, match="another model"):
    image_index.search(out, str(photos / "img0001.png"), encode, lambda e, b: e[:, :b], 16,
                       "model-B", log=lambda *a: None)
  with pytest.raises(DataError, match="another model or code lengths"):
    image_index.build(str(photos), out, encode, lambda e, b: e[:, :b], [16], "model-B", 8,
                      "sign", log=lambda *a: None)
  hits = image_index.search(out, str(photos / "img0003.png"), encode, lambda e, b: e[:, :b],
                            16, "model-A", k=2, log=lambda *a: None)
  assert hits["queries"][0]["results"][0] == {"file": "img0003.png", "distance": 0}


def test_train_evaluate_encode_in_process(tmp_path):
  """The fast tier's run of the trainer and the modes (the slow tests run main.py itself):
  train two steps, evaluate again (the same numbers), encode the database (the same codes)."""
  from nsh_jax import modes, retrieval
  c = tiny_config(steps=2)
  wd = str(tmp_path / "run")
  modes.MODES.get("train")(c, wd, {})
  first = json.load(open(os.path.join(wd, "metrics.json")))
  assert [h["step"] for h in first["history"]] == [2] and "hash layer 16" in first["ceiling"]
  modes.MODES.get("evaluate")(c, wd, {})
  again = json.load(open(os.path.join(wd, "metrics.json")))
  assert again["by_bits"]["16"]["map"] == first["by_bits"]["16"]["map"]
  assert again["history"] == first["history"] and again["curve"] == first["curve"]
  modes.MODES.get("encode")(c, wd, {"output": str(tmp_path / "db.npz")})
  np.testing.assert_array_equal(
      retrieval.load_index(str(tmp_path / "db.npz"))["codes"],
      retrieval.load_index(os.path.join(wd, "codes", "database_16bit.npz"))["codes"])


def test_learning_curve_is_recorded_and_survives_a_resume(tmp_path):
  """``eval_every``: a point per evaluation (test and validation mAP per length) in
  ``curve.json``, ``metrics.json`` and the events; the last point is the final table's; a
  run resumed from an earlier checkpoint keeps the points before it and re-measures the rest;
  one finished and run again has each step once."""
  import shutil
  from nsh_jax import modes
  c = tiny_config(steps=4)
  c.train.eval_every = 2
  wd = str(tmp_path / "run")
  modes.MODES.get("train")(c, wd, {})
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert [p["step"] for p in m["curve"]] == [2, 4]
  assert m["curve"][-1]["map"] == {b: r["map"] for b, r in m["by_bits"].items()}
  assert m["curve"][-1]["validation"] == {b: r["map"] for b, r in m["validation"].items()}
  assert json.load(open(os.path.join(wd, "curve.json"))) == m["curve"]
  shutil.rmtree(os.path.join(wd, "checkpoints", "4"))  # the run now resumes at step 2
  os.remove(os.path.join(wd, "metrics.json"))
  modes.MODES.get("train")(c, wd, {})
  again = json.load(open(os.path.join(wd, "metrics.json")))
  assert again["curve"] == m["curve"]
  modes.MODES.get("train")(c, wd, {})  # already finished: evaluated again, one point per step
  assert json.load(open(os.path.join(wd, "metrics.json")))["curve"] == m["curve"]
