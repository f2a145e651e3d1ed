"""The training driver: data -> jitted steps -> logs, events, checkpoints -> evaluation.

``train_and_evaluate(config, workdir)`` resumes from the newest readable
checkpoint in ``workdir``, trains to ``train.steps``, evaluates every code
length and writes ``metrics.json``.  The same code runs on 1 device, N devices
and several processes (each feeds its slice of the global batch through
``jax.make_array_from_process_local_data``; one process writes events and files).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional

import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import (checkpoints, config_checks, distributed, encoder_input, evaluation, events,
                     input_pipeline, optim, state as state_lib, step as step_lib)
from nsh_jax.errors import TrainingError
from nsh_jax.files import code_version, format_duration, provenance, read_json, write_json

__all__ = ["train_and_evaluate", "resolve_steps"]


@dataclasses.dataclass
class _Run:
  """What one training run holds besides the TrainState."""
  config: ml_collections.ConfigDict
  workdir: str
  inputs: encoder_input.EncoderInput
  mesh: jax.sharding.Mesh
  manager: object
  writer: Optional[object]
  log: Callable
  last_good: Optional[int] = None
  history: list = dataclasses.field(default_factory=list)
  curve: list = dataclasses.field(default_factory=list)


def _summary_writer(workdir: str):
  if jax.process_index() != 0:
    return None
  return events.SummaryWriter(os.path.join(workdir, "tensorboard"))


def _check_finite(run: _Run, state) -> None:
  skipped = int(jax.device_get(state.nonfinite_steps))
  if not skipped:
    return
  first = int(jax.device_get(state.first_nonfinite))
  if run.config.train.on_nonfinite == "stop":
    where = (f"the last good checkpoint is step {run.last_good} in {run.manager.directory}"
             if run.last_good is not None else "no checkpoint was written yet")
    raise TrainingError(f"non-finite loss or gradients at step {first}; the update was not "
                        f"applied and training stopped ({where}). Lower train.learning_rate "
                        f"or set train.on_nonfinite='skip'")
  run.log(f"warning: {skipped} non-finite update(s) skipped so far (first at step {first})")


def _log_step(run: _Run, done: int, m: dict, rate: float) -> None:
  total = int(run.config.train.steps)
  mining = ""
  if "mining_chance" in m:  # train.diagnostics, at the longest length
    b = max(state_lib.bit_list(run.config))
    mining = (f" | mining {m[f'mining_{b}bit']:.3f}, others {m[f'mining_others_{b}bit']:.3f} "
              f"(chance {m['mining_chance']:.3f}) | "
              f"hash grad sorted/rest {m['grad_hash_sorted']:.3g}/{m['grad_hash_rest']:.3g}")
  # No rate yet at the first step after a (re)start: its time is compilation's.
  speed = (f"{rate:.2f} steps/s | ETA {format_duration((total - done) / rate)}" if rate > 0
           else "steps/s from the next log")
  run.log(f"step {done}/{total} | loss {m['loss']:.4f} | bit balance {m['bit_balance']:.3f} "
          f"| {speed}" + mining)
  if m["bit_balance"] > 0.98 and done >= run.config.train.warmup_steps:
    run.log(f"warning: codes collapsed at step {done} (every bit has the same sign in "
            f"{m['bit_balance']:.0%} of the batch): raise loss.balance_weight or lower "
            f"train.learning_rate")
  run.history.append({"step": done, **m})
  if run.writer:
    for k, v in m.items():
      run.writer.scalar(f"train/{k}", v, done)
    run.writer.scalar("train/learning_rate",
                      float(optim.learning_rate_schedule(run.config)(done)), done)
    run.writer.flush()


def _record_eval(run: _Run, result: dict, step: int) -> None:
  """One point of the learning curve: mAP per length on the test queries (``map``) and,
  where the protocol has them, on the validation queries (``validation``, what a choice of
  steps may read); into ``run.curve``, ``curve.json`` (kept with the checkpoints, so that
  a resumed run's curve is whole) and the TensorBoard events."""
  point = {"step": int(step), "map": {str(b): r["map"] for b, r in result["by_bits"].items()}}
  if "validation" in result:
    point["validation"] = {str(b): r["map"] for b, r in result["validation"].items()}
  run.curve = [c for c in run.curve if c["step"] != point["step"]] + [point]  # re-evaluated
  if jax.process_index() == 0:
    write_json(_curve_path(run.workdir), run.curve)
  if run.writer:
    for b, v in point["map"].items():
      run.writer.scalar(f"eval/map_{b}bit", v, step)
    for b, v in point.get("validation", {}).items():
      run.writer.scalar(f"eval/val_map_{b}bit", v, step)
    run.writer.flush()


def _restore(run: _Run, state):
  # Replicated over the global mesh first, so that Orbax restores straight into
  # that layout (with several processes, moving it afterwards would need
  # cross-host transfers).
  state = jax.device_put(state, NamedSharding(run.mesh, P()))
  state, step = checkpoints.restore_latest(run.manager, state, run.log)
  run.last_good = step
  if step is not None:
    run.log(f"resumed from checkpoint {step} in {run.manager.directory}")
    run.history = [h for h in _read_history(run.workdir) if h["step"] <= step]
    run.curve = [c for c in read_json(_curve_path(run.workdir), []) if c["step"] <= step]
  return state


def _history_path(workdir: str) -> str:
  return os.path.join(workdir, "history.json")


def _curve_path(workdir: str) -> str:
  return os.path.join(workdir, "curve.json")


def _read_history(workdir: str) -> list:
  """The logged steps saved with the checkpoints (``[]`` if none or unreadable), so
  that a resumed run's ``metrics.json`` holds the whole history."""
  return list(read_json(_history_path(workdir), []))


def _train_loop(run: _Run, state, encoder):
  config, t, splits = run.config, run.config.train, run.inputs.splits
  step_fn = step_lib.make_train_step(config, run.mesh, run.inputs.views, splits.num_classes)
  data = NamedSharding(run.mesh, P("data"))
  start, total = int(state.step), int(t.steps)
  t_last, s_last = time.time(), start
  for step, images, labels in input_pipeline.train_batches(
      run.inputs.train, splits.train_labels, t.batch_size, config.seed, start,
      total, jax.process_index(), jax.process_count()):
    x = jax.make_array_from_process_local_data(data, images)
    y = jax.make_array_from_process_local_data(data, labels)
    if step == start and jax.process_count() > 1:
      # Compiled ahead, then every process waits for the others: the step's first
      # all-reduce must not wait on a peer still compiling (distributed.barrier).
      step_fn = step_fn.lower(state, x, y).compile()
      distributed.barrier("train_step_compiled")
    state, metrics = step_fn(state, x, y)
    done = step + 1
    if done == start + 1 and done < total:  # the rate (and ETA) leaves out compilation
      jax.block_until_ready(state.step)
      t_last, s_last = time.time(), done
    is_log = done % t.log_every == 0 or done == total
    is_ckpt = done % t.checkpoint_every == 0 or done == total
    if is_log or is_ckpt:  # the only host syncs of the loop
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(run, state)
      if is_log:
        now = time.time()
        _log_step(run, done, m, (done - s_last) / max(now - t_last, 1e-9))
        t_last, s_last = now, done
      if is_ckpt:
        # History first: a kill between the two then resumes from an older
        # checkpoint, whose steps the history covers.
        if jax.process_index() == 0:
          write_json(_history_path(run.workdir), run.history)
        checkpoints.save(run.manager, done, state)
        run.last_good = done
    if t.eval_every and done % t.eval_every == 0 and done < total:
      _record_eval(run, evaluation.evaluate(config, state, run.inputs, run.mesh,
                                            log=run.log, encoder=encoder), done)
      t_last, s_last = time.time(), done  # the rate counts training steps, not evaluation
  return state


def _header(run: _Run, start_step: int) -> None:
  """What is about to run, before the first step."""
  c, s = run.config, run.inputs.splits
  shape = "x".join(str(d) for d in s.train_images.shape[1:3])
  how = ("frozen, heads on cached features" if run.inputs.name == "features" else
         "frozen" if c.model.frozen else "trained")
  lengths = "/".join(str(b) for b in state_lib.bit_list(c))
  devices = f"{jax.device_count()} {jax.default_backend()} device(s)"
  if jax.process_count() > 1:
    devices += f" in {jax.process_count()} processes"
  resume = f" (resuming at step {start_step})" if start_step else ""
  for line in (f"nsh-jax: {c.loss.name} on {c.dataset.name}",
               f"  data      train {s.train_images.shape[0]:,} | query {s.query_images.shape[0]:,} | "
               f"database {s.db_images.shape[0]:,} images ({shape}), {s.num_classes} classes"
               + ("" if s.val_rows is None else f" | validation {len(s.val_rows):,} queries")
               + f" | {c.dataset.protocol} protocol, split seed {c.dataset.split_seed}",
               f"  model     {c.model.backbone} ({how}) | codes {lengths} bits"
               + ("" if c.quantizer == "sign" else f" ({c.quantizer} on the hash layer)")
               + f" | input {c.dataset.image_size}px",
               f"  training  {c.train.steps:,} steps"
               + (f" ({c.train.epochs:g} epochs)" if c.train.get("epochs") else "")
               + f" x batch {c.train.batch_size} on {devices} | "
               f"{c.train.optimizer} lr {c.train.learning_rate:g} | seed {c.seed}",
               f"  work dir  {run.workdir}{resume}"):
    run.log(line)


def _summary(run: _Run, result: dict) -> None:
  """One closing table: the model beside the reference rows and the ceilings, what is best on
  validation, then where the outputs are."""
  lengths = state_lib.bit_list(run.config)
  k = str(result["top_k"] or "all")
  run.log(f"\nmAP@{k}".ljust(24) + "".join(f"{b}-bit".rjust(9) for b in lengths))
  by = result["by_bits"]
  rows = [(f"model ({run.config.loss.name})", {b: by[b]["map"] for b in lengths})]
  if "asymmetric" in by[lengths[0]]:
    rows.append(("model, re-ranked", {b: by[b]["asymmetric"][k] for b in lengths}))
  if "validation" in result:  # what model selection reads
    rows.append(("model on validation", {b: result["validation"][b]["map"] for b in lengths}))
  rows += list(result.get("baselines", {}).items())  # none with eval.baselines off
  ceiling = result.get("ceiling", {})
  for row, name in (("features", "features, cosine"),
                    ("trained backbone", "trained backbone, cosine")):
    if row in ceiling:
      rows.append((name, {b: ceiling[row]["map_at"][k] for b in lengths}))
  if ceiling:
    rows.append(("hash layer, cosine", {b: ceiling[f"hash layer {b}"]["map_at"][k]
                                        for b in lengths}))
  if "memorisation" in result:  # the same codes, training images as queries
    rows.append(("model, training queries", {b: result["memorisation"][b]["training"]
                                             for b in lengths}))
  rows.append(("model P@H<=2", {b: by[b]["p_at_h2"] for b in lengths}))
  for name, values in rows:
    run.log(name.ljust(23) + "".join(f"{values[b]:9.4f}" for b in lengths))
  for line in evaluation.verdict(run.config, result):
    run.log(line)
  plots = f"plots in {os.path.join(run.workdir, 'plots')}, " if run.config.eval.plots else ""
  run.log(f"{plots}codes (.npz and .faiss) in "
          f"{os.path.join(run.workdir, 'codes')}, all numbers in "
          f"{os.path.join(run.workdir, 'metrics.json')}")


def device_peak_bytes() -> Optional[int]:
  """The most memory any of this process's devices has held so far (``peak_bytes_in_use``),
  where the backend counts it (GPU, TPU); ``None`` where it does not (the CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  return None if any(p is None for p in peaks) else max(peaks)


def resolve_steps(config, n_train: int):
  """``config`` with its training length in steps: ``train.epochs > 0`` gives
  ``ceil(epochs * n_train / batch_size)`` steps (the config itself is left alone).
  Raises :class:`ConfigError` unless exactly one of ``train.steps`` and ``train.epochs`` is > 0."""
  config_checks.check_length(config)
  epochs = float(config.train.get("epochs", 0) or 0)
  if epochs <= 0:
    return config
  config = config.copy_and_resolve_references()
  config.train.steps = max(1, math.ceil(epochs * n_train / int(config.train.batch_size)))
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Trains (resuming from ``workdir`` if it holds checkpoints), then evaluates.

  Returns the final metrics dict (also written to ``workdir/metrics.json``).
  """
  os.makedirs(workdir, exist_ok=True)
  code_version()  # read now: the code this run starts with is what its metrics.json records
  splits = input_pipeline.load(config)
  config = resolve_steps(config, len(splits.train_labels))
  inputs = encoder_input.create(config, splits, log)
  run = _Run(config, workdir, inputs, state_lib.make_mesh(),
             checkpoints.checkpoint_manager(workdir, config), _summary_writer(workdir), log)
  state = _restore(run, state_lib.create_train_state(config, jax.random.PRNGKey(config.seed),
                                                     inputs))
  encoder = encoder_input.Encoder(inputs, run.mesh)  # compiled once for every evaluation
  t_start = time.time()
  _header(run, int(state.step))
  if int(state.step) >= config.train.steps:
    log(f"training already finished at step {int(state.step)}; evaluating")
  state = _train_loop(run, state, encoder)
  run.manager.wait_until_finished()
  train_seconds = time.time() - t_start
  peak = device_peak_bytes()
  log(f"training done in {format_duration(train_seconds)}"
      + ("" if peak is None else f" | accelerator memory peak {peak / 2**30:.1f} GiB"))
  result = evaluation.evaluate(config, state, inputs, run.mesh, workdir=workdir, log=log,
                               encoder=encoder, reference=True)
  result["train_seconds"] = train_seconds
  if peak is not None:
    result["device_peak_bytes"] = peak
  _record_eval(run, result, int(config.train.steps))
  result["history"] = run.history
  result["curve"] = run.curve
  result.update(provenance(config, splits))
  _summary(run, result)
  if run.writer:
    run.writer.close()
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, "metrics.json"), result)
  return result
