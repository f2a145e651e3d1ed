"""What each ``main.py --mode`` does, one library function per mode.

Every mode is ``fn(config, workdir, options) -> None`` with ``options`` the
mode's command-line values (``input``, ``output``, ``index``, ``query``, ``k``);
``MODES`` finds them by name.  Training modes validate the config first.
"""

from __future__ import annotations

import os
import zipfile

import jax
import numpy as np

from nsh_jax import (checkpoints, config_checks, encoder_input, evaluation, householder,
                     image_folder, image_index, input_pipeline, metrics, retrieval,
                     state as state_lib, train)
from nsh_jax.errors import DataError
from nsh_jax.files import code_version, digest_arrays, provenance, read_json, write_json
from nsh_jax.registry import Registry

__all__ = ["MODES", "restore_trained", "load_images", "trained_encoder"]

MODES = Registry("mode")
# --mode=search on a photo index re-ranks each query's Hamming top-R by its real-valued code
# (retrieval.rerank) unless --rerank says otherwise.
SEARCH_RERANK = 0


def restore_trained(config, workdir: str, inputs: encoder_input.EncoderInput):
  """``(state, mesh)`` from the newest readable checkpoint of a trained ``workdir``."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"no checkpoints in {workdir}: train first "
                            f"(python main.py --config=... --workdir={workdir})")
  mesh = state_lib.make_mesh()
  state = jax.device_put(
      state_lib.create_train_state(config, jax.random.PRNGKey(config.seed), inputs),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  state, step = checkpoints.restore_latest(checkpoints.checkpoint_manager(workdir, config), state)
  if step is None:
    raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
  print(f"restored checkpoint {step} from {workdir}")
  return state, mesh


def load_images(path: str) -> np.ndarray:
  """uint8 ``[n, H, W, 3]`` from the ``images`` array of an ``.npz``."""
  if not os.path.exists(path):
    raise DataError(f"input file not found: {path}")
  with np.load(path) as f:
    if "images" not in f.files:
      raise DataError(f"{path} has no 'images' array (keys: {sorted(f.files)})")
    return input_pipeline.check_images(f"{path}:images", f["images"])


def _has_images(path: str) -> bool:
  """Whether ``path`` is an .npz of images (else it should be a codes file)."""
  try:
    with zipfile.ZipFile(path) as z:
      return "images.npy" in z.namelist()
  except (zipfile.BadZipFile, OSError):
    return False  # load_index reports what is wrong with it


def _trained_on_splits(config, workdir: str):
  """``(inputs, state, mesh)`` for a mode that evaluates a trained ``workdir`` on its
  dataset (the feature cache, when training used it)."""
  config_checks.validate(config, jax.device_count())
  inputs = encoder_input.create(config, input_pipeline.load(config))
  return (inputs,) + restore_trained(config, workdir, inputs)


def trained_encoder(config, workdir: str):
  """``(encode, model digest)`` of a trained ``workdir``: ``encode(images_u8 [n, H, W, 3])
  -> [n, max_bits]`` continuous codes, end to end (a run on cached features rebuilds its
  frozen backbone and applies the checkpoint's heads), without loading the dataset.
  The digest covers the parameters, the quantizer and the encoder input."""
  inputs = encoder_input.create(config)
  state, mesh = restore_trained(config, workdir, inputs)
  encoder = encoder_input.Encoder(inputs, mesh)
  extra = [np.frombuffer(f"{inputs.digest} {config.quantizer}".encode(), np.uint8)]
  qpath = os.path.join(workdir, "codes", "quantizer.npz")
  if config.quantizer != "sign" and os.path.exists(qpath):
    with open(qpath, "rb") as f:
      extra.append(np.frombuffer(f.read(), np.uint8))
  return (lambda images: encoder.images(state, images),
          digest_arrays(*jax.tree.leaves(jax.device_get(state.params)), *extra))


def _encode(config, workdir, images) -> np.ndarray:
  return trained_encoder(config, workdir)[0](images)


@MODES.register("train")
def train_mode(config, workdir, options):
  del options
  config_checks.validate(config, jax.device_count())
  train.train_and_evaluate(config, workdir)


@MODES.register("evaluate")
def evaluate_mode(config, workdir, options):
  del options
  code_version()  # read at the start (see files.code_version)
  inputs, state, mesh = _trained_on_splits(config, workdir)
  result = evaluation.evaluate(config, state, inputs, mesh, workdir=workdir, reference=True)
  result.update(provenance(config, inputs.splits))
  path = os.path.join(workdir, "metrics.json")
  if jax.process_index() == 0:
    write_json(path, _with_training_record(path, result))
  print(f"wrote {workdir}/metrics.json and plots in {workdir}/plots")


def _with_training_record(path: str, result: dict) -> dict:
  """``result`` plus the ``history``, ``curve`` and ``train_seconds`` of the training run whose
  ``metrics.json`` at ``path`` it replaces (evaluation alone has neither)."""
  old = read_json(path, {})
  return {**{k: old[k] for k in ("history", "curve", "train_seconds") if k in old}, **result}


@MODES.register("encode")
def encode_mode(config, workdir, options):
  config_checks.validate(config, jax.device_count())
  images = (load_images(options["input"]) if options.get("input")
            else input_pipeline.load(config).db_images)
  emb = _encode(config, workdir, images)
  out = options.get("output") or os.path.join(workdir, "codes", "encoded.npz")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  lengths = state_lib.bit_list(config)
  for b in lengths:
    path = out if len(lengths) == 1 else out.replace(".npz", f"_{b}bit.npz")
    packed = retrieval.pack_codes(evaluation.codes_for(config, workdir, emb, b))
    retrieval.save_index(path, packed, b)
    if retrieval.save_faiss_index(path[:-len(".npz")] + ".faiss", packed, b):
      path += " (and .faiss)"
    print(f"wrote {emb.shape[0]} {b}-bit codes to {path}")


def _index_dir(workdir: str, options) -> str:
  return options.get("output") or os.path.join(workdir, "index")


@MODES.register("index")
def index_mode(config, workdir, options):
  """Image files under ``--input`` (folder or archive) -> an index of the trained model's
  codes (:mod:`nsh_jax.image_index`), extended on a rerun."""
  if not options.get("input"):
    raise ValueError("--mode=index needs --input=FOLDER_OR_ARCHIVE of images")
  config_checks.validate(config, jax.device_count())
  encode, digest = trained_encoder(config, workdir)
  image_index.build(options["input"], _index_dir(workdir, options), encode,
                    lambda emb, b: evaluation.codes_for(config, workdir, emb, b),
                    state_lib.bit_list(config), digest, config.dataset.image_size,
                    config.quantizer)


def _is_index_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, image_index.INDEX_FILE))


def _is_image_query(path: str) -> bool:
  low = path.lower()
  return (os.path.isdir(path) or low.endswith(image_folder.IMAGE_EXTENSIONS)
          or low.endswith(image_folder.ARCHIVE_SUFFIXES))


@MODES.register("search")
def search_mode(config, workdir, options):
  """``--index`` an index folder (``--mode=index``) and ``--query`` image(s): the top-k
  files; or ``--index``/``--query`` codes files (``--mode=encode``)."""
  index = options.get("index") or (os.path.join(workdir, "index")
                                   if _is_index_dir(os.path.join(workdir, "index")) else None)
  if not index or not options.get("query"):
    raise ValueError("--mode=search needs --query=IMAGE_OR_FOLDER (with an index built by "
                     "--mode=index, or --index=INDEX) or --index=CODES --query=CODES")
  query = options["query"]
  if not os.path.exists(query) and not image_folder.split_inner(query)[1]:
    raise FileNotFoundError(f"query file not found: {query}")
  if _is_index_dir(index):
    if not _is_image_query(query):
      raise ValueError(f"--query={query} must be an image, a folder or an archive of images "
                       f"to search the index {index}")
    config_checks.validate(config, jax.device_count())
    encode, digest = trained_encoder(config, workdir)
    bits = options.get("bits") or state_lib.bit_list(config)[-1]
    rerank = options.get("rerank")
    image_index.search(index, query, encode,
                       lambda emb, b: evaluation.codes_for(config, workdir, emb, b), bits,
                       digest, options["k"], options.get("output"),
                       rerank=SEARCH_RERANK if rerank is None else rerank)
    return
  db = retrieval.load_index(index)
  if _has_images(query):
    q_packed = retrieval.pack_codes(evaluation.codes_for(
        config, workdir, _encode(config, workdir, load_images(query)), db["bits"]))
  else:
    q = retrieval.load_index(query)
    if q["bits"] != db["bits"]:
      raise ValueError(f"query codes have {q['bits']} bits, the index {db['bits']}")
    q_packed = q["codes"]
  dist, idx = retrieval.search(q_packed, db["codes"], options["k"])
  ids = db["ids"][idx]
  for i in range(min(len(ids), 10)):
    print(f"query {i}: " + " ".join(f"{a}({d})" for a, d in zip(ids[i], dist[i])))
  if options.get("output"):
    np.savez(options["output"], ids=ids, distances=dist)
    print(f"wrote {len(ids)} x {ids.shape[1]} neighbours to {options['output']}")


@MODES.register("quantize")
def quantize_mode(config, workdir, options):
  """Sign vs ITQ vs H2Q (``eval.quantizers``) on the trained model's continuous outputs, one
  table row per length."""
  del options
  inputs, state, mesh = _trained_on_splits(config, workdir)
  splits, encoder = inputs.splits, encoder_input.Encoder(inputs, mesh)
  tr, qe, de = (encoder(state, inputs.split(w)) for w in ("train", "query", "database"))
  top_k = config.eval.top_k or None
  names = list(config.eval.get("quantizers", ("sign", "itq", "h2q")))
  print("| bits | " + " | ".join(f"{n} mAP@{top_k or 'all'}" for n in names) + " |")
  print("|---|" + "---|" * len(names))
  table = {}
  for b in state_lib.bit_list(config):
    row = {}
    for name in names:
      qz = householder.fit(name, tr[:, :b], seed=config.seed)
      row[name] = metrics.mean_average_precision(
          householder.apply(qz, qe[:, :b]), householder.apply(qz, de[:, :b]),
          splits.query_labels, splits.db_labels, top_k)
    table[b] = row
    print(f"| {b} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
  write_json(os.path.join(workdir, "quantize.json"), table)
