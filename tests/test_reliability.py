"""Faults the trainer must survive: SIGKILLs, damaged checkpoints, non-finite losses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from helpers import TINY, checkpoint_params, read_only_compile_cache, run_main

pytestmark = pytest.mark.slow  # several processes / runs of main.py each

STEPS = 12
ARGS = TINY + [f"--config.train.steps={STEPS}", "--config.train.warmup_steps=2",
               "--config.model.latent_dim=8"]
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes here, then renames atomically


def _final_params(workdir, step=STEPS):
  return checkpoint_params(workdir, step)


def _start(args):
  env = read_only_compile_cache(dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
  return subprocess.Popen([sys.executable, "main.py"] + args, cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_during_checkpoint_write(proc, ckpt_dir, timeout=240):
  """Polls without sleeping for an orbax temporary directory; SIGKILLs on sight."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(TMP_SUFFIX in d for d in os.listdir(ckpt_dir)):
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
  proc.kill()
  proc.wait()
  return False


def _kill_after(proc, ckpt_dir, min_ckpt, delay):
  """SIGKILL ``delay`` seconds after checkpoint ``min_ckpt`` (or later) exists."""
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= min_ckpt
                                       for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.01)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_random_sigkills_resume_to_identical_params(tmp_path):
  """5+ SIGKILLs (one inside a checkpoint write) then a clean finish == one uninterrupted run."""
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
  # The reference run fills the suite's compilation cache (if any) with every program;
  # the killed runs only read it (tests/helpers.py: read_only_compile_cache).
  res = run_main(ARGS + [f"--workdir={ref_dir}", "--config.eval.top_k=10"])
  assert res.returncode == 0, res.stderr[-2000:]

  args = ARGS + [f"--workdir={run_dir}", "--config.eval.top_k=10"]
  ckpt = os.path.join(run_dir, "checkpoints")
  rng = np.random.default_rng(0)
  during_write = _kill_during_checkpoint_write(_start(args), ckpt)
  kills = 1
  # Random moments: a random delay after a random checkpoint has appeared,
  # so kills land in steps, in saves, in evaluation and in between.
  for target in (2, 4, 6, 8):
    _kill_after(_start(args), ckpt, target, float(rng.uniform(0.0, 1.5)))
    kills += 1
  assert during_write, "never caught orbax mid-write"
  res = run_main(args)
  assert res.returncode == 0, res.stderr[-2000:]
  assert kills >= 5
  ref, got = _final_params(ref_dir), _final_params(run_dir)
  assert ref.keys() == got.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  # metrics.json keeps the whole history across the kills, each step once.
  ref_h, got_h = (json.load(open(os.path.join(d, "metrics.json")))["history"]
                  for d in (ref_dir, run_dir))
  assert [h["step"] for h in got_h] == [h["step"] for h in ref_h] == list(range(2, STEPS + 1, 2))
  assert got_h == ref_h


def test_truncated_checkpoint_falls_back_with_warning(tmp_path):
  workdir = str(tmp_path / "run")
  args = ARGS + [f"--workdir={workdir}", "--config.train.steps=6"]
  assert run_main(args).returncode == 0
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [2, 4, 6]
  for root, _, files in os.walk(os.path.join(ckpt, "6")):
    for f in files:
      if f not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        with open(os.path.join(root, f), "r+b") as fh:  # a half-written file
          fh.truncate(os.path.getsize(os.path.join(root, f)) // 3)
  # A leftover temporary directory from a write that never finished.
  shutil.copytree(os.path.join(ckpt, "4"), os.path.join(ckpt, "8" + TMP_SUFFIX + "-1"))
  res = run_main(ARGS + [f"--workdir={workdir}", "--config.train.steps=8"])
  assert res.returncode == 0, res.stderr[-2000:]
  warn = [l for l in res.stdout.splitlines() if l.startswith("warning: checkpoint 6")]
  assert warn and "unreadable" in warn[0] and ckpt in warn[0], res.stdout
  assert "resumed from checkpoint 4" in res.stdout
  assert os.path.isdir(os.path.join(workdir, "checkpoints.corrupt"))
  # Step 6 was trained and saved again, readable this time.
  assert np.all(np.isfinite(np.concatenate([v.ravel() for v in _final_params(workdir, 8).values()])))
  _final_params(workdir, 6)

  # The same work dir under another model is a one-line error that moves nothing.
  before = sorted(os.listdir(ckpt))
  res = run_main(TINY + [f"--workdir={workdir}", "--config.train.steps=10",
                         "--config.model.latent_dim=16"])
  err = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert res.returncode == 2 and len(err) == 1, res.stderr[-2000:]
  assert err[0].startswith("error: checkpoint 8 in ") and "another model" in err[0], err
  assert "latent" in err[0] and "shape" in err[0], err  # names the differing array
  assert sorted(os.listdir(ckpt)) == before


def test_nonfinite_loss_stops_naming_step_and_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  assert run_main(ARGS + [f"--workdir={workdir}", "--config.train.steps=4"]).returncode == 0
  shutil.copytree(workdir, os.path.join(tmp_path, "start"))
  # Resume with an absurd learning rate: the next update makes the weights
  # ~1e30 and the following forward pass overflows.
  # (The optimizer keeps its structure: changing grad_clip would change the
  # checkpoint's optimizer state, which resuming refuses.)
  blowup = ["--config.train.learning_rate=1e30"]
  res = run_main(ARGS + [f"--workdir={workdir}"] + blowup)
  assert res.returncode != 0
  err = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error: non-finite loss or gradients at step "), \
      res.stderr[-2000:]
  assert "last good checkpoint is step" in err[0] and "Traceback" not in res.stderr
  ckpt = os.path.join(workdir, "checkpoints")
  for step in sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()):
    leaves = np.concatenate([v.ravel() for v in _final_params(workdir, step).values()])
    assert np.all(np.isfinite(leaves)), f"checkpoint {step} holds non-finite params"

  # The same 4-step start, copied rather than trained again (checkpoint 4 and its history).
  skip_dir = str(tmp_path / "skip")
  shutil.copytree(os.path.join(tmp_path, "start"), skip_dir)
  res = run_main(ARGS + [f"--workdir={skip_dir}", "--config.train.on_nonfinite=skip"] + blowup)
  # Every non-finite update is skipped and training reaches the end; the
  # diverged (huge but finite) weights then give non-finite codes, which
  # evaluation refuses in one line instead of writing garbage codes.
  assert "non-finite update(s) skipped" in res.stdout, res.stdout[-2000:]
  assert f"step {STEPS}/{STEPS}" in res.stdout
  err = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert res.returncode == 2 and len(err) == 1 and "non-finite outputs" in err[0], res.stderr[-2000:]
  leaves = np.concatenate([v.ravel() for v in _final_params(skip_dir).values()])
  assert np.all(np.isfinite(leaves))
