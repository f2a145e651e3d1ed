"""TensorBoard events written without TensorFlow, read back by TensorBoard's own loader."""

import glob
import sys

from nsh_jax import events


def test_scalars_round_trip_through_tensorboards_reader(tmp_path):
  assert "tensorflow" not in sys.modules
  w = events.SummaryWriter(str(tmp_path / "tb"))
  want = [("train/loss", 2.5, 1), ("train/loss", 1.25, 3), ("eval/map_16bit", 0.5, 3)]
  for tag, value, step in want:
    w.scalar(tag, value, step)
  w.flush()
  w.close()
  assert "tensorflow" not in sys.modules  # the writer never imports it
  (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  assert path == w.path
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(path)
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["eval/map_16bit", "train/loss"]
  got = [(tag, e.value, e.step) for tag in ("train/loss", "eval/map_16bit")
         for e in acc.Scalars(tag)]
  assert got == want  # float32-exact values, in step order
