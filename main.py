"""nsh-jax command line: train, evaluate, encode, search, quantize.

  python main.py --config=configs/default.py --workdir=runs/default
  python main.py --config=configs/cifar_prefix.py --config.train.steps=500 --workdir=runs/c
  python main.py --mode=evaluate --config=... --workdir=runs/c
  python main.py --mode=encode   --config=... --workdir=runs/c --input=images.npz --output=db.npz
  python main.py --mode=search   --index=db.npz --query=q.npz --k=10 [--output=hits.npz]
  python main.py --mode=quantize --config=... --workdir=runs/c --config.quantizer=h2q

Errors in configs, data and files are reported as one line (``error: ...``) with
exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from nsh_jax import malloc  # noqa: E402

# Before TensorFlow or JAX start their threads: XLA:CPU's buffers then stop
# faulting in fresh pages every step (6-10% faster training; nsh_jax/malloc.py).
malloc.tune()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, events, codes, plots.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "encode", "search", "quantize"],
                  "What to do.")
flags.DEFINE_string("input", None, "encode: .npz with 'images' uint8 [n,H,W,3] (default: the "
                    "dataset's database split).")
flags.DEFINE_string("output", None, "encode/search: where to write the result (.npz).")
flags.DEFINE_string("index", None, "search: database codes file written by encode/train.")
flags.DEFINE_string("query", None, "search: query codes file, or .npz with 'images'.")
flags.DEFINE_integer("k", 10, "search: neighbours per query.")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def _setup_runtime():
  # tf.data / TFDS must not take accelerator memory from JAX.
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except Exception:
    pass
  import jax
  import nsh_jax  # noqa: F401 -- sets its XLA:CPU flags before anything starts a backend
  if int(os.environ.get("JAX_PROCESS_COUNT", "1")) > 1 or os.environ.get("COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def _restore(config, workdir, splits):
  import jax
  from nsh_jax import train
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"no checkpoints in {workdir}: train first "
                            f"(python main.py --config=... --workdir={workdir})")
  mesh = train.make_mesh()
  state = train.create_train_state(
      config, jax.random.PRNGKey(config.seed),
      (config.dataset.image_size, config.dataset.image_size, 3), splits.num_classes)
  state, step = train.restore_latest(train.checkpoint_manager(workdir, config), state)
  if step is None:
    raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
  print(f"restored checkpoint {step} from {workdir}")
  return state, mesh


def _load_images(path):
  import numpy as np
  from nsh_jax.input_pipeline import DataError, _check_images
  if not os.path.exists(path):
    raise DataError(f"input file not found: {path}")
  with np.load(path) as f:
    if "images" not in f.files:
      raise DataError(f"{path} has no 'images' array (keys: {sorted(f.files)})")
    return _check_images(f"{path}:images", f["images"])


def _has_images(path) -> bool:
  """Whether ``path`` is an .npz of images (else it should be a codes file)."""
  import zipfile
  try:
    with zipfile.ZipFile(path) as z:
      return "images.npy" in z.namelist()
  except (zipfile.BadZipFile, OSError):
    return False  # load_index reports what is wrong with it


def run(config, workdir: str) -> None:
  import jax
  import numpy as np
  from nsh_jax import config_checks, householder, input_pipeline, metrics, retrieval, train

  mode = FLAGS.mode
  if mode == "search":
    if not FLAGS.index or not FLAGS.query:
      raise ValueError("--mode=search needs --index=DATABASE_CODES and --query=QUERY_CODES")
    db = retrieval.load_index(FLAGS.index)
    if not os.path.exists(FLAGS.query):
      raise FileNotFoundError(f"query file not found: {FLAGS.query}")
    if _has_images(FLAGS.query):
      splits = input_pipeline.load(config)
      state, mesh = _restore(config, workdir, splits)
      emb = train.encode_images(train.make_encode_fn(config, mesh), state,
                                _load_images(FLAGS.query), mesh)[:, :db["bits"]]
      q_packed = retrieval.pack_codes(emb)
    else:
      q = retrieval.load_index(FLAGS.query)
      if q["bits"] != db["bits"]:
        raise ValueError(f"query codes have {q['bits']} bits, the index {db['bits']}")
      q_packed = q["codes"]
    dist, idx = retrieval.search(q_packed, db["codes"], FLAGS.k)
    ids = db["ids"][idx]
    for i in range(min(len(ids), 10)):
      print(f"query {i}: " + " ".join(f"{a}({d})" for a, d in zip(ids[i], dist[i])))
    if FLAGS.output:
      np.savez(FLAGS.output, ids=ids, distances=dist)
      print(f"wrote {len(ids)} x {ids.shape[1]} neighbours to {FLAGS.output}")
    return

  config_checks.validate(config, jax.device_count())
  if mode == "train":
    train.train_and_evaluate(config, workdir)
    return
  splits = input_pipeline.load(config)
  state, mesh = _restore(config, workdir, splits)
  if mode == "evaluate":
    result = train.evaluate(config, state, splits, mesh, workdir=workdir)
    train._write_json(os.path.join(workdir, "metrics.json"), result)
    print(f"wrote {workdir}/metrics.json and plots in {workdir}/plots")
  elif mode == "encode":
    images = _load_images(FLAGS.input) if FLAGS.input else splits.db_images
    emb = train.encode_images(train.make_encode_fn(config, mesh), state, images, mesh)
    out = FLAGS.output or os.path.join(workdir, "codes", "encoded.npz")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    for b in train.bit_list(config):
      path = out if len(train.bit_list(config)) == 1 else out.replace(".npz", f"_{b}bit.npz")
      retrieval.save_index(path, retrieval.pack_codes(emb[:, :b]), b)
      print(f"wrote {emb.shape[0]} {b}-bit codes to {path}")
  elif mode == "quantize":
    encode = train.make_encode_fn(config, mesh)
    tr = train.encode_images(encode, state, splits.train_images, mesh)
    qe = train.encode_images(encode, state, splits.query_images, mesh)
    de = train.encode_images(encode, state, splits.db_images, mesh)
    top_k = config.eval.top_k or None
    names = ["sign", "itq", "h2q"]
    table = {}
    print(f"| bits | " + " | ".join(f"{n} mAP@{top_k or 'all'}" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for b in train.bit_list(config):
      row = {}
      for name in names:
        qz = householder.fit(name, tr[:, :b], seed=config.seed)
        row[name] = metrics.mean_average_precision(
            householder.apply(qz, qe[:, :b]), householder.apply(qz, de[:, :b]),
            splits.query_labels, splits.db_labels, top_k)
      table[b] = row
      print(f"| {b} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    train._write_json(os.path.join(workdir, "quantize.json"), table)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  _setup_runtime()
  try:
    run(FLAGS.config, FLAGS.workdir)
  except Exception as e:  # one line for the user; --debug for the traceback
    if FLAGS.debug:
      raise
    from nsh_jax.config_checks import ConfigError
    from nsh_jax.input_pipeline import DataError
    from nsh_jax.train import TrainingError
    known = (ConfigError, DataError, TrainingError, ValueError, FileNotFoundError, KeyError)
    if not isinstance(e, known):
      print(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)",
            file=sys.stderr)
      sys.exit(1)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing, but a bad key or value is one line, not a traceback."""
  try:
    return FLAGS(argv)
  except Exception as e:  # ml_collections raises AttributeError/ValueError/TypeError
    msg = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    where = f" (in {', '.join(given)})" if given else ""
    print(f"error: bad command-line flag{where}: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
