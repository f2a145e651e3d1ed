"""Evaluation: a trained state -> continuous codes -> binary codes -> the field's metrics.

For every code length of the config: codes from ``config.quantizer`` (sign of the
hash head, or a post-hoc H2Q/ITQ/LSH rotation fitted on the training split), then
mAP@k, P@H<=2, P@N and the PR curve (:func:`metrics.evaluate_codes`), on the test
queries and, where the protocol has them, on the validation queries.  Prints
``mAP@<k> <bits>-bit: <value>`` per length.  With a work dir it also writes the codes
(checksummed ``.npz`` indexes and faiss binary indexes), the continuous embeddings, the
fitted quantizer (``codes/quantizer.npz``: ``--mode=encode``/``index``/``search`` code new
images as the database was coded) and plots.  With ``reference=True`` it adds the
reference rows of :func:`baselines` and the ceiling rows of :func:`ceilings`.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from nsh_jax import householder, metrics, protocol, retrieval
from nsh_jax.encoder_input import EncoderInput, Encoder, Features
from nsh_jax.errors import DataError, TrainingError
from nsh_jax.protocol import Splits
from nsh_jax.state import bit_list

__all__ = ["evaluate", "embed", "fit_quantizers", "save_quantizers", "codes_for", "write_codes",
           "baselines", "ceilings", "verdict", "BASELINE_QUANTIZERS"]

# Reference baselines every run reports beside the model, on the same split.
BASELINE_QUANTIZERS = ("itq", "lsh")


def _check_finite(name: str, emb: np.ndarray) -> None:
  if not np.all(np.isfinite(emb)):
    bad = int(np.sum(~np.all(np.isfinite(emb), axis=1)))
    raise TrainingError(f"the encoder gives non-finite outputs for {bad} of {emb.shape[0]} "
                        f"{name} images; the parameters have diverged (lower "
                        f"train.learning_rate, or resume from an earlier checkpoint)")


def embed(config, state, inputs: EncoderInput, encoder: Encoder) -> dict:
  """Continuous hash outputs ``{'query', 'database'[, 'train']} -> [n, max_bits]`` of the
  splits (``train`` only when a post-hoc quantizer is fitted on it)."""
  which = ("query", "database") + (("train",) if config.quantizer != "sign" else ())
  emb = {w: encoder(state, inputs.split(w)) for w in which}
  _check_finite("query", emb["query"])
  _check_finite("database", emb["database"])
  return emb


def fit_quantizers(config, emb: dict) -> dict:
  """``{bits: quantizer}`` of ``config.quantizer`` per length (post-hoc ones fitted on the
  training split's embeddings, never the queries)."""
  sign = config.quantizer == "sign"
  return {b: householder.fit(config.quantizer, (emb["query"] if sign else emb["train"])[:, :b],
                             bits=None if sign else b, seed=config.seed)
          for b in bit_list(config)}


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


def write_codes(workdir: str, bits: int, query_codes, db_codes, splits: Splits) -> None:
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


def _report(config, qc, dc, ql, dl, keys) -> dict:
  """:func:`metrics.evaluate_codes` (ties by ``keys``, the protocol's tie rule), plus
  ``map_at`` ``{k: mAP@k}`` for ``eval.depths`` (0: the whole database) -- how deep in the
  ranking a method's quality sits -- and, with ``eval.rerank = R > 0``, ``asymmetric``: the
  same depths with each query's Hamming top-``R`` re-ordered by the asymmetric score of its
  real-valued code (:func:`nsh_jax.retrieval.rerank`; reported beside the Hamming ranking,
  the paper's metric, never instead of it)."""
  top_k = config.eval.top_k or None
  r = metrics.evaluate_codes(qc, dc, ql, dl, top_k, tie_keys=keys)
  depths = tuple(config.eval.get("depths", ()))
  if depths:
    r["map_at"] = {str(d or "all"): metrics.mean_average_precision(qc, dc, ql, dl, d or None,
                                                                   keys) for d in depths}
  rerank = int(config.eval.get("rerank", 0))
  if rerank:
    r["asymmetric"] = {str(d or "all"): metrics.mean_average_precision(
        qc, dc, ql, dl, d or None, keys, rerank) for d in _depths(config)}
  return r


def _line(config, prefix: str, bits: int, r: dict) -> str:
  depths = ("  [" + ", ".join(f"@{d} {v:.4f}" for d, v in r["map_at"].items()) + "]"
            if r.get("map_at") else "")
  asym = r.get("asymmetric", {}).get(str(config.eval.top_k or "all"))
  return (f"{prefix}mAP@{config.eval.top_k or 'all'} {bits}-bit: {r['map']:.4f}  "
          f"(P@H<=2 {r['p_at_h2']:.4f}" + ("" if asym is None else f", re-ranked {asym:.4f}")
          + ")" + depths)


def _score(config, splits: Splits, codes: dict, log) -> dict:
  """The metrics of every length's ``(query codes, database codes)``: on the test queries,
  and on the validation queries (against the database without them) where there are any."""
  result = {"top_k": config.eval.top_k or None, "quantizer": config.quantizer, "by_bits": {}}
  val_labels = protocol.validation_view(splits, splits.db_labels)
  keys = splits.db_keys
  if val_labels is not None:
    result["validation"] = {}
  for b, (qc, dc) in codes.items():
    if val_labels is not None:  # model selection: validation queries, never the test ones
      vq, vd = protocol.validation_view(splits, dc)
      val_keys = None if keys is None else protocol.validation_view(splits, keys)[1]
      result["validation"][b] = _report(config, vq, vd, *val_labels, val_keys)
      log(_line(config, "val ", b, result["validation"][b]))
    result["by_bits"][b] = _report(config, qc, dc, splits.query_labels, splits.db_labels, keys)
    log(_line(config, "", b, result["by_bits"][b]))
  return result


def memorisation(config, splits: Splits, codes: dict, validation: dict, log=print):
  """The memorisation check: mAP@top_k of each length's codes with training images as
  queries (:func:`protocol.training_query_rows`, against the database without them) beside
  the validation queries' (``validation``: ``{bits: mAP}``).  A model that memorised its
  training images ranks them far better than images it never saw; a gap near 0 says what it
  learned carries over.  ``{bits: {'training', 'validation', 'gap'}}``, or ``None`` where the
  protocol has no training rows in the database or no validation queries."""
  rows = protocol.training_query_rows(splits, config.seed)
  if rows is None:
    return None
  tl, dl = protocol.query_view(rows, splits.db_labels)
  keys = None if splits.db_keys is None else protocol.query_view(rows, splits.db_keys)[1]
  out = {}
  for b, (_, dc) in codes.items():
    tq, td = protocol.query_view(rows, dc)
    train = metrics.mean_average_precision(tq, td, tl, dl, config.eval.top_k or None, keys)
    out[b] = {"training": train, "validation": validation[b], "gap": train - validation[b]}
    log(f"memorisation: mAP@{config.eval.top_k or 'all'} {b}-bit with {len(rows):,} training "
        f"images as queries {train:.4f}, validation queries {validation[b]:.4f} "
        f"(gap {train - validation[b]:+.4f})")
  return out


def _depths(config) -> tuple:
  """The depths every ceiling row is reported at: ``eval.depths`` (0: the whole database)
  and ``eval.top_k``."""
  return tuple(dict.fromkeys(tuple(config.eval.get("depths", ())) + (config.eval.top_k or 0,)))


def ceilings(config, splits: Splits, emb: dict, features: Optional[Features], log=print,
             trained: Optional[tuple] = None) -> dict:
  """Cosine ranking of continuous vectors (:func:`metrics.cosine_map`), test and validation
  queries, every depth: ``'features'``, the frozen backbone's clean features (what any code
  made from them can reach), ``'trained backbone'`` (``trained``: the query and database
  features of a backbone that trained), and ``'hash layer <b>'``, the model's own
  continuous outputs per length (what its ``b``-bit codes can reach; none where ``emb`` is
  ``None``).
  ``{row: {'map_at': {depth: mAP}, 'validation': {depth: mAP}}}``."""
  depths = _depths(config)
  rows = {} if emb is None else {f"hash layer {b}": (emb["query"][:, :b], emb["database"][:, :b])
                                 for b in bit_list(config)}
  if trained is not None:
    rows = {"trained backbone": trained, **rows}
  if features is not None:
    rows = {"features": (features.query, features.database), **rows}
  val_labels = protocol.validation_view(splits, splits.db_labels)
  out = {}
  for name, (q, db) in rows.items():
    key = lambda d: str(d or "all")
    out[name] = {"map_at": {key(d): v for d, v in metrics.cosine_map(
        q, db, splits.query_labels, splits.db_labels, [d or None for d in depths]).items()}}
    if val_labels is not None:
      vq, vd = protocol.validation_view(splits, db)
      out[name]["validation"] = {key(d): v for d, v in metrics.cosine_map(
          vq, vd, *val_labels, [d or None for d in depths]).items()}
    log(f"ceiling: {name}, cosine: " + ", ".join(f"@{d} {v:.4f}"
                                                 for d, v in out[name]["map_at"].items()))
  return out


def evaluate(config, state, inputs: EncoderInput, mesh, workdir: Optional[str] = None,
             log=print, encoder: Optional[Encoder] = None, reference: bool = False) -> dict:
  """Encodes ``inputs``' query and database splits and reports every length.

  Returns ``{'top_k', 'quantizer', 'by_bits': {bits: metrics.evaluate_codes(...)}}``
  (and ``'validation'`` likewise, where the protocol has validation queries); with
  ``reference`` also ``'baselines'`` (:func:`baselines`, logged after the model's lines
  and drawn in its plots).  Files are written only by process 0.
  """
  workdir = workdir if jax.process_index() == 0 else None
  splits = inputs.splits
  emb = embed(config, state, inputs, encoder or Encoder(inputs, mesh))
  quantizers = fit_quantizers(config, emb)
  codes = {b: (householder.apply(q, emb["query"][:, :b]),
               householder.apply(q, emb["database"][:, :b])) for b, q in quantizers.items()}
  result = _score(config, splits, codes, log)
  curves = {}
  features = inputs.frozen_features() if reference else None
  trained = None
  if reference and inputs.trains_backbone and (config.eval.get("baselines", True)
                                               or config.eval.get("ceiling", True)):
    own = Encoder(inputs, mesh, output="features")  # how far the representation moved
    trained = Features(*(own(state, inputs.split(w)) for w in ("train", "query", "database")))
  if reference and config.eval.get("baselines", True):
    curves = baselines(config, splits, features, log, trained)
    result["baselines"] = {k: {b: r["map"] for b, r in by.items()} for k, by in curves.items()}
    if "validation" in result:
      result["baselines_validation"] = {k: {b: r["validation"] for b, r in by.items()}
                                        for k, by in curves.items()}
  if reference and "validation" in result and config.eval.get("memorisation", True):
    check = memorisation(config, splits, codes,
                         {b: r["map"] for b, r in result["validation"].items()}, log)
    if check is not None:
      result["memorisation"] = check
  if reference and config.eval.get("ceiling", True):
    result["ceiling"] = ceilings(config, splits, emb, features, log,
                                 None if trained is None else (trained.query, trained.database))
  if workdir:
    _write(config, workdir, result, emb, codes, quantizers, splits, curves, log)
  return result


def _write(config, workdir, result, emb, codes, quantizers, splits: Splits, curves, log):
  """Codes, embeddings and the fitted quantizer under ``codes/``; the plots under ``plots/``."""
  for b, (qc, dc) in codes.items():
    write_codes(workdir, b, qc, dc, splits)
  np.savez(os.path.join(workdir, "codes", "embeddings.npz"), query=emb["query"],
           database=emb["database"], query_labels=splits.query_labels,
           database_labels=splits.db_labels)
  if config.quantizer != "sign":
    save_quantizers(workdir, quantizers)
  if not config.eval.get("plots", True):
    return
  try:
    from nsh_jax import plots
    plots.write_all(os.path.join(workdir, "plots"), result, emb["query"], splits.query_labels,
                    baselines=curves)
    b = bit_list(config)[-1]
    plots.retrieval_examples(
        os.path.join(workdir, "plots", "retrieval.png"), splits.query_images,
        splits.query_labels, splits.db_images, splits.db_labels, *codes[b],
        f"{b}-bit codes: top 10 of the database (mAP@{config.eval.top_k or 'all'} "
        f"{result['by_bits'][b]['map']:.3f})", splits.class_names)
  except Exception as e:  # plotting must never lose a finished run's metrics
    log(f"warning: plots not written ({type(e).__name__}: {e})")


PIXELS = 32  # the side the pixel baselines read images at (larger ones: area-averaged down)


def _pixels(images: np.ndarray) -> np.ndarray:
  """``[n, s * s * 3]`` float32 in [0, 1]: images of at most ``PIXELS`` on a side as they are,
  larger ones area-averaged (Pillow's box filter) to ``PIXELS x PIXELS``."""
  if images.shape[1] > PIXELS or images.shape[2] > PIXELS:
    from PIL import Image
    images = np.stack([np.asarray(Image.fromarray(im).resize((PIXELS, PIXELS), Image.BOX))
                       for im in images])
  return np.asarray(images, np.float32).reshape(images.shape[0], -1) / 255.0


def baselines(config, splits: Splits, features: Optional[Features] = None, log=print,
              trained: Optional[Features] = None) -> dict:
  """``{'<quantizer>-<source>': {bits: metrics.evaluate_codes(...)}}`` for ITQ and LSH
  fitted on the training split of raw pixels (``'pixels'``: flattened, scaled to [0, 1], at
  most ``PIXELS x PIXELS``) and, when a frozen backbone's clean ``features`` are given, on those
  (``'features'``), and on ``trained``, the clean features of a backbone that trained
  (``'trained backbone'``: whether the model's own head makes better codes of its
  representation than post-hoc ITQ does); each report has ``'validation'`` (its mAP@k on the validation
  queries) where the protocol has them.  Logs ``<name> mAP@<k> <bits>-bit: <value>``.
  """
  top_k = config.eval.top_k or None
  sources = {}
  if features is not None:
    sources["features"] = (features.train, features.query, features.database)
  if trained is not None:
    sources["trained backbone"] = (trained.train, trained.query, trained.database)
  sources["pixels"] = (_pixels(splits.train_images), _pixels(splits.query_images),
                       _pixels(splits.db_images))
  val_labels = protocol.validation_view(splits, splits.db_labels)
  keys = splits.db_keys
  val_keys = None if keys is None or val_labels is None else protocol.validation_view(
      splits, keys)[1]
  out = {}
  for source, (train, query, db) in sources.items():
    for name in BASELINE_QUANTIZERS:
      key = f"{name}-{source}"
      out[key] = {}
      for b in bit_list(config):
        q = householder.fit(name, train, bits=min(b, train.shape[1]), seed=config.seed)
        qc, dc = householder.apply(q, query), householder.apply(q, db)
        r = out[key][b] = metrics.evaluate_codes(qc, dc, splits.query_labels, splits.db_labels,
                                                 top_k, tie_keys=keys)
        if val_labels is not None:
          r["validation"] = metrics.mean_average_precision(
              *protocol.validation_view(splits, dc), *val_labels, top_k, val_keys)
        log(f"{key} mAP@{top_k or 'all'} {b}-bit: {r['map']:.4f}"
            + ("" if val_labels is None else f"  (validation {r['validation']:.4f})"))
  return out


_ADVICE = {"pixels": "longer training (train.epochs or train.steps), the other augmentation "
                     "preset, or a pretrained backbone (configs/cifar_prefix_pretrained.py)",
           "features": "more steps, other learning rates or temperatures on validation "
                       "(benchmarks/pretrained_table.py), or these codes as they are",
           "trained backbone": "a wider or longer-trained head on the backbone it trained, or "
                               "these codes (its backbone's features, quantized by ITQ)"}


def verdict(config, result: dict) -> list:
  """Lines that name the best codes on the validation queries, per length (the model or a
  baseline), and say plainly where a baseline is above the model there."""
  if "validation" not in result or "baselines_validation" not in result:
    return []
  lines = []
  for b in sorted(result["validation"], key=int):
    model = result["validation"][b]["map"]
    scores = {name: by[b] for name, by in result["baselines_validation"].items()}
    best = max(scores, key=scores.get)
    if scores[best] > model:
      name, source = best.split("-", 1)
      lines.append(f"{name.upper()} on {source} is above the model on validation at {b} bits "
                   f"({scores[best]:.4f} vs {model:.4f}): those codes are the better choice "
                   f"here; for the model try {_ADVICE.get(source, 'another recipe')}")
  if not lines:
    k = config.eval.top_k or "all"
    maps = " / ".join(f"{result['validation'][b]['map']:.4f}"
                      for b in sorted(result["validation"], key=int))
    lines.append(f"best on validation at every length: the model (mAP@{k} {maps}, above "
                 f"every baseline)")
  return lines
