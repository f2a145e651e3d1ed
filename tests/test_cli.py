"""The command line after training: evaluate, encode, search (codes and images)."""

import json
import os

import numpy as np
import pytest

from helpers import TINY, run_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cli") / "run")
  args = TINY + ["--config.train.steps=4", f"--workdir={workdir}"]
  res = run_main(args)
  assert res.returncode == 0, res.stderr[-2000:]
  return workdir, args


def _brute_force(q_packed, db_packed, k):
  q = np.unpackbits(q_packed, axis=1).astype(np.int32)
  d = np.unpackbits(db_packed, axis=1).astype(np.int32)
  dist = (q[:, None, :] != d[None, :, :]).sum(-1)
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(dist, order, 1), order


def test_evaluate_writes_metrics_and_plots(trained):
  workdir, args = trained
  path = os.path.join(workdir, "metrics.json")
  trained_metrics = json.load(open(path))
  assert [h["step"] for h in trained_metrics["history"]] == [2, 4]
  json.dump({**trained_metrics, "by_bits": {}}, open(path, "w"))  # must be written again
  if os.path.exists(os.path.join(workdir, "plots/pr_curve.png")):
    os.remove(os.path.join(workdir, "plots/pr_curve.png"))
  res = run_main(args + ["--mode=evaluate"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert "restored checkpoint 4" in res.stdout and "mAP@100 16-bit:" in res.stdout
  m = json.load(open(path))
  # The training run's record survives a re-evaluation.
  assert m["history"] == trained_metrics["history"]
  assert m["train_seconds"] == trained_metrics["train_seconds"]
  printed = float(res.stdout.split("mAP@100 16-bit:")[1].split()[0])
  assert abs(m["by_bits"]["16"]["map"] - printed) < 1e-4
  assert set(m["baselines"]) == {"itq-pixels", "lsh-pixels"}  # also beside the model in the plots
  assert "itq-pixels mAP@100 16-bit:" in res.stdout
  for name in ("pr_curve.png", "precision_at_n.png", "tsne.png"):
    with open(os.path.join(workdir, "plots", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


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


def test_search_refuses_damaged_or_mismatched_files(trained, tmp_path):
  from nsh_jax import retrieval
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
    res = run_main(args + ["--mode=search", f"--index={index}", f"--query={query}"])
    err = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 2 and len(err) == 1 and expect in err[0], res.stderr[-2000:]


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
