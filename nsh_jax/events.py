"""TensorBoard event files without TensorFlow.

``flax.metrics.tensorboard.SummaryWriter`` imports TensorFlow (seconds per
launch, and a dependency a JAX user may not have), and so does
``tensorboard``'s own ``EventFileWriter`` when TensorFlow is installed (for its
``gfile``).  The format is small: a file of TFRecords (``uint64`` length, its
masked CRC-32C, the bytes, their masked CRC-32C), each an ``Event`` proto; the
first carries ``file_version = "brain.Event:2"``, scalars are
``Summary.Value.simple_value``.  TensorBoard and ``tf.compat.v1.train.
summary_iterator`` read it.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["SummaryWriter"]


class SummaryWriter:
  """Scalar summaries into ``log_dir/events.out.tfevents.*``.

  Same call shape as flax's writer for what the trainer logs:
  ``scalar(tag, value, step)``, ``flush()``, ``close()``.
  """

  def __init__(self, log_dir: str):
    # The proto classes and the record framing only: neither imports TensorFlow.
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    os.makedirs(log_dir, exist_ok=True)
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(log_dir, name)
    self._writer = RecordWriter(open(self.path, "wb"))
    self._write(self._event(file_version="brain.Event:2"))
    self.flush()

  def _write(self, event) -> None:
    event.wall_time = time.time()
    self._writer.write(event.SerializeToString())

  def scalar(self, tag: str, value, step: int) -> None:
    summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
    self._write(self._event(step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
