"""nsh-jax command line: train, evaluate, encode, search, quantize.

  python main.py --config=configs/default.py --workdir=runs/default
  python main.py --config=configs/cifar_prefix.py --config.train.steps=500 --workdir=runs/c
  python main.py --mode=evaluate --config=... --workdir=runs/c
  python main.py --mode=encode   --config=... --workdir=runs/c --input=images.npz --output=db.npz
  python main.py --mode=search   --index=db.npz --query=q.npz --k=10 [--output=hits.npz]
  python main.py --mode=index    --config=... --workdir=runs/c --input=~/Photos
  python main.py --mode=search   --config=... --workdir=runs/c --query=photo.jpg [--output=hits.json]
  python main.py --mode=quantize --config=... --workdir=runs/c --config.quantizer=h2q

Several processes (one per host): add ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` to the same command on every process, or
nothing where a cluster manager provides them (TPU pods, SLURM).  Errors in
configs, data and files are one line (``error: ...``, exit 2); ``--debug``
shows the traceback.  This file only parses flags, applies the process-wide
settings (which the library never does on import) and calls ``nsh_jax.modes``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# Process-wide settings, before TensorFlow or JAX start threads or backends.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only reads data here: no start-up line
from nsh_jax import malloc, xla_cpu  # noqa: E402

malloc.tune()  # faster XLA:CPU steps, bounded heap (nsh_jax/malloc.py)
xla_cpu.apply_defaults()  # YNNPACK fusions off on XLA:CPU (nsh_jax/xla_cpu.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def _bad_flag(e: Exception, argv) -> None:
  """A bad key, value or config path: one line and exit 2, not a traceback."""
  if isinstance(e, OSError):  # a missing or unreadable config file
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    print(f"error: cannot load the config file (--config): {lines[-1]}", file=sys.stderr)
    sys.exit(2)
  text = str(e).replace("\\n", "\n").replace("\\'", "'")
  if "Traceback (most recent call last)" in text:  # an error raised inside the config file
    text = [ln for ln in text.splitlines() if ln.strip()][-1]
  msg = " ".join(text.split()).strip("'\"")
  if "Did you mean" in msg:  # ml_collections' unknown-key message, without its quoting
    msg = "no such key. " + msg[msg.index("Did you mean"):]
  given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config")]
  where = f" (in {', '.join(given)})" if given else ""
  print(f"error: bad command-line flag{where}: {msg}", file=sys.stderr)
  sys.exit(2)


try:
  config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.",
                                  lock_config=True)
except Exception as e:  # pylint: disable=broad-except
  # Without --config= the default file loads here, with any --config.* overrides.
  _bad_flag(e, sys.argv)
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, events, codes, plots.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "encode", "index", "search", "quantize"],
                  "What to do.")
flags.DEFINE_string("input", None, "encode: .npz with 'images' uint8 [n,H,W,3] (default: the "
                    "dataset's database split); index: a folder or archive of images.")
flags.DEFINE_string("output", None, "encode: codes file (.npz); index: the index folder (default "
                    "WORKDIR/index); search: results (.json for an index, with a gallery .png "
                    "beside it; .npz for codes files).")
flags.DEFINE_string("index", None, "search: an index folder (--mode=index; default WORKDIR/index) "
                    "or a database codes file (encode/train).")
flags.DEFINE_string("query", None, "search: image file, folder or archive (against an index), "
                    "or a query codes file / .npz with 'images'.")
flags.DEFINE_integer("k", 10, "search: neighbours per query.")
flags.DEFINE_integer("rerank", None, "search (an index): re-order each query's Hamming top-R "
                     "by its real-valued code, R = this (0: Hamming order; default: "
                     "nsh_jax.modes.SEARCH_RERANK).")
flags.DEFINE_integer("bits", None, "search: code length to search an index with (default: the "
                     "config's longest).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-process: seconds before a silent (dead) "
                     "process makes the others stop with an error.")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def _start_backends():
  import jax
  from nsh_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         heartbeat_timeout_s=FLAGS.heartbeat_timeout)
  # tf.data / TFDS must not take accelerator memory (where TensorFlow is installed at all)
  if jax.default_backend() != "cpu" and importlib.util.find_spec("tensorflow"):
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from nsh_jax import errors
  try:
    _start_backends()
    from nsh_jax import modes
    options = {"input": FLAGS.input, "output": FLAGS.output, "index": FLAGS.index,
               "query": FLAGS.query, "k": FLAGS.k, "bits": FLAGS.bits, "rerank": FLAGS.rerank}
    modes.MODES.get(FLAGS.mode)(FLAGS.config, FLAGS.workdir, options)
  except Exception as e:  # one line for the user; --debug for the traceback
    if FLAGS.debug:
      raise
    _exit_with_one_line(e, errors)


def _exit_with_one_line(e: Exception, errors) -> None:
  import jax
  msg, code = errors.describe(e, jax.process_count())
  print(f"error: {msg}", file=sys.stderr)
  if jax.process_count() > 1:  # skip exit hooks: JAX's distributed shutdown would wait for
    sys.stdout.flush()         # (or abort on) the processes that are gone
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def _parse_flags(argv):
  """absl flag parsing, but a bad key, value or config path is one line, not a traceback."""
  try:
    argv = FLAGS(argv)
    FLAGS.config.keys()  # the file loads lazily (an error placeholder raises on use): load here
    return argv
  except Exception as e:  # ml_collections raises OSError/AttributeError/ValueError/TypeError
    _bad_flag(e, argv)

if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
