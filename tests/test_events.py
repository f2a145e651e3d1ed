"""TensorBoard events written without TensorFlow, read back by TensorBoard's own loader."""

import glob
import subprocess
import sys

from conftest import ROOT
from nsh_jax import events


def test_the_writer_never_imports_tensorflow(tmp_path):
  # A fresh interpreter: the test process may have imported TensorFlow for another test.
  probe = ("import sys; from nsh_jax import events; w = events.SummaryWriter(sys.argv[1]); "
           "w.scalar('a', 1.0, 1); w.close(); print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=ROOT, check=True,
                       capture_output=True, text=True, env={"PYTHONPATH": ROOT, "PATH": ""})
  assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_scalars_round_trip_through_tensorboards_reader(tmp_path):
  w = events.SummaryWriter(str(tmp_path / "tb"))
  want = [("train/loss", 2.5, 1), ("train/loss", 1.25, 3), ("eval/map_16bit", 0.5, 3)]
  for tag, value, step in want:
    w.scalar(tag, value, step)
  w.flush()
  w.close()
  (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  assert path == w.path
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(path)
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["eval/map_16bit", "train/loss"]
  got = [(tag, e.value, e.step) for tag in ("train/loss", "eval/map_16bit")
         for e in acc.Scalars(tag)]
  assert got == want  # float32-exact values, in step order
