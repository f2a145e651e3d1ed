"""Multi-process training on CPU: 2 processes x 4 devices (gloo) against 1 process x 8 devices.

Each process is main.py with --coordinator_address/--num_processes/--process_id on localhost.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from helpers import TINY, checkpoint_params

pytestmark = pytest.mark.slow  # several processes / runs of main.py each

STEPS = 12
# Baselines on: their multi-process evaluation is compared with one process's.
ARGS = TINY + [f"--config.train.steps={STEPS}", "--config.train.warmup_steps=2",
               "--config.model.latent_dim=8", "--config.train.checkpoint_every=2",
               "--config.eval.baselines=True"]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(processes: int) -> dict:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={8 // processes}"]))
  return env


def _start(workdir, processes: int, port=None):
  """Starts ``processes`` copies of main.py (``8 / processes`` devices each)."""
  procs = []
  for i in range(processes):
    extra = ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
              f"--process_id={i}", "--heartbeat_timeout=10"] if processes > 1 else [])
    procs.append(subprocess.Popen(
        [sys.executable, "main.py"] + ARGS + [f"--workdir={workdir}"] + extra, cwd=ROOT,
        env=_env(processes), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=600):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


BARRIER_SCRIPT = """
import sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[2]}", 2, int(sys.argv[1]))
from nsh_jax import distributed

waits = []
for late in (2.0, 0.0, 2.0):  # process 1 arrives late at the 1st and 3rd barrier
  if jax.process_index() == 1:
    time.sleep(late)
  t = time.time()
  distributed.barrier("test")
  waits.append(time.time() - t)
print(" ".join(f"{w:.2f}" for w in waits))
"""


def test_barrier_waits_for_the_late_process():
  """distributed.barrier: process 0 waits for a peer that arrives 2 s late, each time, and
  the same name can be used again (one barrier per call)."""
  port = _port()
  procs = [subprocess.Popen([sys.executable, "-c", BARRIER_SCRIPT, str(i), str(port)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = _finish(procs, timeout=120)
  waits = [float(w) for w in outs[0][0].split()]
  assert waits[0] > 1.5 and waits[2] > 1.5, waits   # process 0 waited for process 1
  assert waits[1] < 1.0, waits


def _metrics(workdir):
  m = json.load(open(os.path.join(workdir, "metrics.json")))
  return m, [h["loss"] for h in m["history"]]


def _kill_one_midway(workdir, procs):
  """SIGKILLs process 1 once checkpoint 4 exists; the survivor must stop with one line
  ``error: ...`` within 2 minutes."""
  ckpt = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 4 for d in os.listdir(ckpt)):
      break
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), "a process ended before checkpoint 4"
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  t_kill = time.time()
  out, err = procs[0].communicate(timeout=180)
  assert procs[0].returncode != 0, "the survivor finished without its peer"
  lines = [ln for ln in err.strip().splitlines() if ln.strip()]
  assert lines and lines[-1].startswith("error:"), err[-2000:]
  assert time.time() - t_kill < 120


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One process x 8 devices to the end; two processes x 4 devices, one of them SIGKILLed
  midway, then the same command on both resuming to the end (one 2-process history, not
  two: each 2-process launch costs minutes on this CPU, so the resume is the comparison)."""
  base = tmp_path_factory.mktemp("mp")
  one, two = str(base / "one"), str(base / "two")
  _finish(_start(one, 1))
  _kill_one_midway(two, _start(two, 2, _port()))
  outs = _finish(_start(two, 2, _port()))
  return one, two, outs


def test_killed_process_stops_the_other_and_both_resume(runs):
  _, two, outs = runs
  assert "resumed from checkpoint" in outs[0][0]
  assert os.path.exists(os.path.join(two, "metrics.json"))


def test_two_processes_match_one(runs):
  """The resumed 2-process run against the uninterrupted 1-process run: the same losses
  at every logged step, parameters, embeddings, codes, mAP and baselines."""
  one, two, _ = runs
  m1, l1 = _metrics(one)
  m2, l2 = _metrics(two)
  assert [h["step"] for h in m2["history"]] == [h["step"] for h in m1["history"]]
  np.testing.assert_allclose(l2, l1, rtol=1e-4)
  p1, p2 = checkpoint_params(one, STEPS), checkpoint_params(two, STEPS)
  assert p1.keys() == p2.keys()
  # Adam scales every update to about the learning rate (1e-3) whatever the gradient's size:
  # where a weight's gradient is ~0, the all-reduce's summation order (gloo's vs one
  # process's) can turn its few updates around. 2 of 73,728 weights moved by 2.4e-5 on an
  # AVX-512 machine; a wrong gradient mean would move most weights by ~1e-3 a step (and
  # the losses above).
  for k in p1:
    np.testing.assert_allclose(p2[k], p1[k], rtol=1e-3, atol=1e-4, err_msg=k)
  # Evaluation: every query and database row gathered from both processes, in order.
  e1, e2 = (np.load(os.path.join(d, "codes", "embeddings.npz")) for d in (one, two))
  for k in ("query", "database"):
    np.testing.assert_allclose(e2[k], e1[k], atol=1e-4, err_msg=k)
    np.testing.assert_array_equal(e2[f"{k}_labels"], e1[f"{k}_labels"])
  # ITQ, fitted on those embeddings, magnifies their float differences (2.5e-5 here turned
  # 0.9% of the database's bits and 0.002 of mAP): the codes and mAP match loosely.
  c1, c2 = (np.unpackbits(np.load(os.path.join(d, "codes", "database_16bit.npz"))["codes"])
            for d in (one, two))
  assert np.mean(c1 != c2) < 0.03
  for b, r in m1["by_bits"].items():
    assert m2["by_bits"][b]["map"] == pytest.approx(r["map"], abs=0.01)
    assert m2["by_bits"][b]["p_at_h2"] == pytest.approx(r["p_at_h2"], abs=0.02)
  assert m2["baselines"] == m1["baselines"]
  # One process writes the files: one events file per launch.
  assert os.path.exists(os.path.join(two, "codes", "database_16bit.npz"))
  assert len([f for f in os.listdir(os.path.join(two, "tensorboard"))
              if f.startswith("events")]) == 2
