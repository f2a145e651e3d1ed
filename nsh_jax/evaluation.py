"""Encoding and evaluation: images -> continuous codes -> binary codes -> the field's metrics.

For every code length of the config: codes from ``config.quantizer`` (sign of
the hash head, or a post-hoc H2Q/ITQ/LSH rotation fitted on the training
split), then mAP@k, P@H<=2, P@N and the PR curve (:func:`metrics.evaluate_codes`).
Prints ``mAP@<k> <bits>-bit: <value>`` per length; with a work dir also writes
the codes (checksummed ``.npz`` indexes and faiss binary indexes), the
continuous embeddings, the fitted quantizer (``codes/quantizer.npz``, so that
``--mode=encode``/``search`` code new images as the database was coded) and plots.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import augment, distributed, householder, metrics, protocol, retrieval
from nsh_jax.errors import DataError, TrainingError
from nsh_jax.files import pad_rows
from nsh_jax.state import bit_list

__all__ = ["make_encode_fn", "encode_images", "quantize_codes", "evaluate", "write_codes",
           "baselines", "BASELINE_QUANTIZERS", "save_quantizers", "codes_for"]

# Reference baselines every run reports beside the model, on the same split.
BASELINE_QUANTIZERS = ("itq", "lsh")


def make_encode_fn(config, mesh, output: str = "logits", images: bool = True) -> Callable:
  """``(state, images_u8 [n, H, W, 3]) -> logits [n, max_bits]`` (no augmentation).

  ``output`` picks another encoder output instead (``'latents'``, ``'features'``);
  ``images=False`` takes cached backbone features ``[n, F]`` as they are.
  """
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  def encode(state, x):
    if images:
      x = augment.resize(augment.to_unit(x), config.dataset.image_size)
      x = augment.normalize(x, config.dataset.normalization)
    variables = {"params": state.params}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    return state.apply_fn(variables, x, train=False)[output]

  return jax.jit(encode, in_shardings=(repl, data), out_shardings=data)


def _to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) sharded array, whole, on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def encode_images(encode_fn, state, images: np.ndarray, mesh, batch_size: int = 512) -> np.ndarray:
  """Continuous hash outputs (pre-sign) ``[n, max_bits]`` float32 for all images,
  in zero-padded batches of a multiple of the device count.

  Every process holds all ``images``; each batch is split over every device of
  every process, and the outputs are gathered back to every process.
  """
  n_dev = mesh.devices.size
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  data = NamedSharding(mesh, P("data"))
  out = []
  for i in range(0, images.shape[0], batch_size):
    rows = min(batch_size, images.shape[0] - i)
    chunk = pad_rows(images[i:i + batch_size], batch_size)
    sharded = jax.make_array_from_callback(chunk.shape, data, lambda idx, c=chunk: c[idx])
    y = encode_fn(state, sharded)
    if i == 0:  # every batch has one shape: only the first compiles (distributed.barrier)
      distributed.barrier("encoder_compiled")
    out.append(_to_host(y)[:rows])
  return np.concatenate(out).astype(np.float32)


def quantize_codes(config, train_emb, query_emb, db_emb, bits: int):
  """``(query codes, database codes, quantizer)`` of one length under
  ``config.quantizer`` (sign, or a post-hoc rotation fitted on ``train_emb``)."""
  q = householder.fit(config.quantizer, (query_emb if train_emb is None else train_emb)[:, :bits],
                      bits=None if config.quantizer == "sign" else bits, seed=config.seed)
  return householder.apply(q, query_emb[:, :bits]), householder.apply(q, db_emb[:, :bits]), q


def _quantizer_path(workdir: str) -> str:
  return os.path.join(workdir, "codes", "quantizer.npz")


def save_quantizers(workdir: str, quantizers: dict) -> None:
  """``codes/quantizer.npz``: ``name`` and, per length ``b``, ``mean_<b>`` and ``projection_<b>``."""
  arrays = {"name": np.array(next(iter(quantizers.values()))["name"])}
  for b, q in quantizers.items():
    arrays[f"mean_{b}"], arrays[f"projection_{b}"] = q["mean"], q["projection"]
  os.makedirs(os.path.dirname(_quantizer_path(workdir)), exist_ok=True)
  np.savez(_quantizer_path(workdir), **arrays)


def codes_for(config, workdir: str, embeddings: np.ndarray, bits: int) -> np.ndarray:
  """Real-valued codes ``[n, bits]`` (signs = the binary codes) of new embeddings, with the
  quantizer the run's evaluation fitted (``config.quantizer = 'sign'``: the head's own signs)."""
  if config.quantizer == "sign":
    return embeddings[:, :bits]
  path = _quantizer_path(workdir)
  if not os.path.exists(path):
    raise DataError(f"{path} not found: this run codes with quantizer '{config.quantizer}', "
                    f"fitted when it is evaluated; run --mode=evaluate on {workdir} first")
  with np.load(path) as f:
    if str(f["name"]) != config.quantizer or f"mean_{bits}" not in f.files:
      raise DataError(f"{path} holds a '{f['name']}' quantizer without {bits} bits; the config "
                      f"asks for '{config.quantizer}': run --mode=evaluate on {workdir} again")
    q = {"name": str(f["name"]), "mean": f[f"mean_{bits}"], "projection": f[f"projection_{bits}"]}
  return householder.apply(q, embeddings[:, :bits])


def _check_finite(name: str, emb: np.ndarray) -> None:
  if not np.all(np.isfinite(emb)):
    bad = int(np.sum(~np.all(np.isfinite(emb), axis=1)))
    raise TrainingError(f"the encoder gives non-finite outputs for {bad} of {emb.shape[0]} "
                        f"{name} images; the parameters have diverged (lower "
                        f"train.learning_rate, or resume from an earlier checkpoint)")


def write_codes(workdir: str, bits: int, query_codes, db_codes, splits) -> None:
  """``codes/{query,database}_<bits>bit.npz``: packed codes with labels, checksummed;
  and ``codes/database_<bits>bit.faiss``, the database as a faiss binary index."""
  cdir = os.path.join(workdir, "codes")
  os.makedirs(cdir, exist_ok=True)
  for split, codes, labels in (("query", query_codes, splits.query_labels),
                               ("database", db_codes, splits.db_labels)):
    retrieval.save_index(os.path.join(cdir, f"{split}_{bits}bit.npz"),
                         retrieval.pack_codes(codes), bits, labels=labels,
                         metadata={"split": split})
  retrieval.save_faiss_index(os.path.join(cdir, f"database_{bits}bit.faiss"),
                             retrieval.pack_codes(db_codes), bits)


def _report(config, qc, dc, ql, dl, top_k) -> dict:
  """:func:`metrics.evaluate_codes` plus ``map_at`` ``{k: mAP@k}`` for ``eval.depths``
  (0: the whole database) -- how deep in the ranking a method's quality sits."""
  r = metrics.evaluate_codes(qc, dc, ql, dl, top_k)
  depths = tuple(config.eval.get("depths", ()))
  if depths:
    r["map_at"] = {str(d or "all"): metrics.mean_average_precision(qc, dc, ql, dl, d or None)
                   for d in depths}
  return r


def _depth_text(r: dict) -> str:
  return ("  [" + ", ".join(f"@{d} {v:.4f}" for d, v in r["map_at"].items()) + "]"
          if r.get("map_at") else "")


def evaluate(config, state, splits, mesh, workdir: Optional[str] = None, log=print,
             encode_fn: Optional[Callable] = None, reference: Optional[tuple] = None) -> dict:
  """Encodes query and database and reports the standard metrics for every length.

  Returns ``{'top_k', 'quantizer', 'by_bits': {bits: metrics.evaluate_codes(...)}}``;
  with ``reference = (image_splits, features or None)`` also ``'baselines'``
  (:func:`baselines`, logged after the model's lines and drawn in its plots).
  Files are written only by process 0.
  """
  workdir = workdir if jax.process_index() == 0 else None
  encode_fn = encode_fn or make_encode_fn(config, mesh)  # pass one in to avoid recompiles
  q_emb = encode_images(encode_fn, state, splits.query_images, mesh)
  db_emb = encode_images(encode_fn, state, splits.db_images, mesh)
  _check_finite("query", q_emb)
  _check_finite("database", db_emb)
  train_emb = None
  if config.quantizer != "sign":
    train_emb = encode_images(encode_fn, state, splits.train_images, mesh)
  top_k = config.eval.top_k or None
  result = {"top_k": top_k, "quantizer": config.quantizer, "by_bits": {}}
  quantizers = {}
  val_labels = protocol.validation_view(splits, splits.db_labels)
  if val_labels is not None:
    result["validation"] = {}
  for b in bit_list(config):
    qc, dc, quantizers[b] = quantize_codes(config, train_emb, q_emb, db_emb, b)
    if val_labels is not None:  # model selection: validation queries, never the test ones
      vq, vd = protocol.validation_view(splits, dc)
      v = result["validation"][b] = _report(config, vq, vd, *val_labels, top_k)
      log(f"val mAP@{top_k or 'all'} {b}-bit: {v['map']:.4f}  (P@H<=2 {v['p_at_h2']:.4f})"
          + _depth_text(v))
    r = _report(config, qc, dc, splits.query_labels, splits.db_labels, top_k)
    result["by_bits"][b] = r
    log(f"mAP@{top_k or 'all'} {b}-bit: {r['map']:.4f}  (P@H<=2 {r['p_at_h2']:.4f})"
        + _depth_text(r))
    if workdir:
      write_codes(workdir, b, qc, dc, splits)
  curves = {}
  if reference is not None and config.eval.get("baselines", True):
    curves = baselines(config, reference[0], reference[1], log)
    result["baselines"] = {k: {b: r["map"] for b, r in by.items()} for k, by in curves.items()}
  if workdir:  # only process 0 is given a workdir to write to
    np.savez(os.path.join(workdir, "codes", "embeddings.npz"), query=q_emb, database=db_emb,
             query_labels=splits.query_labels, database_labels=splits.db_labels)
    if config.quantizer != "sign":
      save_quantizers(workdir, quantizers)
    try:
      if not config.eval.get("plots", True):
        return result
      from nsh_jax import plots
      plots.write_all(os.path.join(workdir, "plots"), result, q_emb, splits.query_labels,
                      baselines=curves)
      shown = reference[0] if reference is not None else splits  # images, not features
      if shown.query_images.ndim == 4:
        b = bit_list(config)[-1]
        plots.retrieval_examples(
            os.path.join(workdir, "plots", "retrieval.png"), shown.query_images,
            shown.query_labels, shown.db_images, shown.db_labels, qc, dc,
            f"{b}-bit codes: top 10 of the database (mAP@{top_k or 'all'} "
            f"{result['by_bits'][b]['map']:.3f})", splits.class_names)
    except Exception as e:  # plotting must never lose a finished run's metrics
      log(f"warning: plots not written ({type(e).__name__}: {e})")
  return result


def baselines(config, splits, features=None, log=print) -> dict:
  """``{'<quantizer>-<source>': {bits: metrics.evaluate_codes(...)}}`` for ITQ and LSH
  fitted on the training split of raw pixels (``'pixels'``, flattened, scaled to
  [0, 1]) and, when ``features = (train, query, database)`` is given, on a frozen
  backbone's clean features (``'features'``).  Logs ``<name> mAP@<k> <bits>-bit:
  <value>`` per length.
  """
  top_k = config.eval.top_k or None
  pixels = lambda x: np.asarray(x, np.float32).reshape(x.shape[0], -1) / 255.0
  sources = {"features": features} if features is not None else {}
  sources["pixels"] = (pixels(splits.train_images), pixels(splits.query_images),
                       pixels(splits.db_images))
  out = {}
  for source, (train, query, db) in sources.items():
    for name in BASELINE_QUANTIZERS:
      key = f"{name}-{source}"
      out[key] = {}
      for b in bit_list(config):
        q = householder.fit(name, train, bits=min(b, train.shape[1]), seed=config.seed)
        out[key][b] = metrics.evaluate_codes(
            householder.apply(q, query), householder.apply(q, db), splits.query_labels,
            splits.db_labels, top_k)
        log(f"{key} mAP@{top_k or 'all'} {b}-bit: {out[key][b]['map']:.4f}")
  return out
