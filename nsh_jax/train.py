"""The trainer: one jitted, data-parallel step; Orbax checkpoints; evaluation.

The batch is sharded over a 1-D ``jax.sharding.Mesh`` axis ``'data'``; params
and optimizer state are replicated; ``jax.jit`` inserts the gradient
all-reduce.  The same code runs on 1 device, N devices and multi-host pods
(``jax.distributed.initialize()`` when there are several processes; each
process feeds its slice of the global batch via
``jax.make_array_from_process_local_data``).

Loss for NSH (``loss.name='nsh'``), per code length ``b`` of ``bit_list``::

    L_b = ramp(step) * sorted_weight * symmetric SortedNCE(codes_1[:, :b], codes_2[:, :b], z_1, z_2)
          + instance_weight * NT-Xent(z_1, z_2)
          + code_instance_weight * NT-Xent(sign_ste(codes_1[:, :b]), sign_ste(codes_2[:, :b]))
          + quant_weight * mean((|codes| - 1)^2) + balance_weight * mean_k(mean_i codes_ik)^2

(``ramp`` goes 0 -> 1 over ``sorted_warmup_steps``; the instance terms are off by
default and are what NSH needs from scratch, docs/training.md).  With several
lengths the latent term is added once per length (weight ``K * instance_weight``),
as in the runs behind docs/quality.md.

and with several lengths (NHL) ``L = sum_b w_b (L_b + lambda D_b)`` with
dominance-aware ``w`` and cascade distillation ``D`` (:mod:`nsh_jax.nested`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import augment, input_pipeline, losses, metrics, models, nested, retrieval


class TrainState(train_state.TrainState):
  """Params, optimizer state, step, BatchNorm statistics and a non-finite guard."""
  batch_stats: Any = None
  nonfinite_steps: jax.Array = None  # number of updates skipped as non-finite
  first_nonfinite: jax.Array = None  # step of the first one (-1 if none)


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and where to resume from."""


# ----------------------------------------------------------------- building


def bit_list(config) -> list:
  bl = list(config.model.get("bit_list") or []) or [int(config.model.bits)]
  return sorted(int(b) for b in bl)


def create_model(config) -> models.HashEncoder:
  return models.HashEncoder(backbone=config.model.backbone, bits=max(bit_list(config)),
                            latent_dim=config.model.latent_dim, frozen=config.model.frozen,
                            dtype=jnp.bfloat16 if config.model.get("bf16") else jnp.float32)


def learning_rate_schedule(config) -> optax.Schedule:
  t = config.train
  warmup = min(int(t.warmup_steps), max(int(t.steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, warmup_steps=max(warmup, 1),
      decay_steps=max(int(t.steps), warmup + 1), end_value=t.learning_rate * t.final_lr_fraction)


def create_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  lr = learning_rate_schedule(config)
  if t.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=t.weight_decay)
  elif t.optimizer == "sgd":
    opt = optax.chain(optax.add_decayed_weights(t.weight_decay), optax.sgd(lr, momentum=0.9))
  else:
    raise ValueError(f"unknown train.optimizer {t.optimizer!r}")
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip else opt


def create_train_state(config, rng, image_shape, num_classes: int) -> TrainState:
  model = create_model(config)
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  if config.model.pretrained and config.model.backbone != "small_cnn":
    variables = models.load_keras_weights(variables, config.model.backbone)
  variables = flax.core.unfreeze(variables)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=create_optimizer(config),
                           batch_stats=variables.get("batch_stats"),
                           nonfinite_steps=jnp.zeros((), jnp.int32),
                           first_nonfinite=jnp.full((), -1, jnp.int32))


# ------------------------------------------------------------------- losses


def sort_temperature(config, step):
  """SoftSort temperature in Hamming bits (``tau_s * d``), annealed linearly from
  ``sort_temperature_start`` to ``sort_temperature`` over ``sort_anneal_steps``."""
  end = config.loss.sort_temperature
  start = config.loss.get("sort_temperature_start") or end
  steps = max(int(config.loss.get("sort_anneal_steps") or 0), 1)
  frac = jnp.clip(step / steps, 0.0, 1.0)
  return start + (end - start) * frac


def length_loss(config, step, out1, out2, labels, bits: int, centers=None):
  """Loss for one code length ``bits`` from the two views' encoder outputs."""
  name = config.loss.name
  c1, c2 = out1["codes"][:, :bits], out2["codes"][:, :bits]
  if name == "nsh":
    main = jnp.zeros((), jnp.float32)
    weight = float(config.loss.get("sorted_weight", 1.0))
    if weight:  # 0: the no-sort control, and SortedNCE is not computed at all
      tau_bits = sort_temperature(config, step)
      s1, s2 = c1, c2
      if config.loss.get("straight_through"):
        # Sort by exact Hamming similarity of the sign codes; gradients pass
        # straight through to the relaxed codes (docs/training.md).
        s1, s2 = losses.sign_ste(c1), losses.sign_ste(c2)
      main = weight * losses.symmetric_sorted_nce(
          s1, s2, out1["latents"], out2["latents"], num_positives=config.loss.num_positives,
          temperature=config.loss.temperature, sort_temperature=tau_bits / bits,
          sorter=config.loss.sorter)
      ramp = int(config.loss.get("sorted_warmup_steps") or 0)
      if ramp:
        # SortedNCE's positives are only as good as the codes that rank them:
        # ramp it in linearly while the instance terms shape the codes.
        main = main * jnp.clip(step / ramp, 0.0, 1.0)
    inst = float(config.loss.get("instance_weight") or 0.0)
    if inst:
      # The other view as an explicit positive for the latents: from scratch the
      # codes rank candidates at random, so SortedNCE alone has no anchor.
      main = main + inst * losses.nt_xent(out1["latents"], out2["latents"],
                                          config.loss.temperature)
    code_inst = float(config.loss.get("code_instance_weight") or 0.0)
    if code_inst:
      main = main + code_inst * losses.nt_xent(losses.sign_ste(c1), losses.sign_ste(c2),
                                               config.loss.temperature)
  elif name == "contrastive":
    main = losses.nt_xent(losses.sign_ste(c1), losses.sign_ste(c2), config.loss.temperature)
  elif name == "dpsh":
    main = 0.5 * (losses.dpsh_loss(c1, labels) + losses.dpsh_loss(c2, labels))
  elif name == "csq":
    main = 0.5 * (losses.csq_loss(c1, labels, centers[:, :bits])
                  + losses.csq_loss(c2, labels, centers[:, :bits]))
  elif name == "dsh":
    main = 0.5 * (losses.dsh_loss(out1["logits"][:, :bits], labels)
                  + losses.dsh_loss(out2["logits"][:, :bits], labels))
  else:
    raise ValueError(f"unknown loss.name {name!r}")
  quant = 0.5 * (losses.quantization_penalty(c1) + losses.quantization_penalty(c2))
  balance = 0.5 * (losses.bit_balance_penalty(c1) + losses.bit_balance_penalty(c2))
  return (main + config.loss.quant_weight * quant + config.loss.balance_weight * balance, main)


# --------------------------------------------------------------- train step


def make_train_step(config, mesh, centers=None) -> Callable:
  """Builds the jitted step ``(state, images_u8, labels) -> (state, metrics)``.

  Augmentation runs inside the step (per example, keyed by the step and the
  example's position in the global batch).  Non-finite updates are never
  applied: the state keeps its old params and counts the skip.
  """
  bits_all = bit_list(config)
  distill = float(config.loss.get("distill_weight") or 0.0)
  dominance = bool(config.loss.get("dominance_weights")) and len(bits_all) > 1
  base_key = jax.random.PRNGKey(config.seed)
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  def step_fn(state: TrainState, images, labels):
    key = jax.random.fold_in(base_key, state.step)
    # Global positions in the batch, sharded like the batch (vmap needs both alike).
    ids = jax.lax.with_sharding_constraint(jnp.arange(images.shape[0]), data)
    v1, v2 = augment.two_views(key, images, ids, config.dataset)
    x = augment.normalize(jnp.concatenate([v1, v2]), config.dataset.normalization)
    n = images.shape[0]

    def forward(params):
      variables = {"params": params}
      if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
        out, upd = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
        return out, upd["batch_stats"]
      return state.apply_fn(variables, x, train=True), None

    def per_length(outs, b):
      o1 = jax.tree.map(lambda a: a[:n], outs)
      o2 = jax.tree.map(lambda a: a[n:], outs)
      return length_loss(config, state.step, o1, o2, labels, b, centers)

    def loss_fn(params):
      outs, new_stats = forward(params)
      terms, mains = [], []
      for i, b in enumerate(bits_all):
        total, main = per_length(outs, b)
        if distill and i + 1 < len(bits_all):
          total = total + distill * nested.cascade_distillation(
              outs["logits"][:, :b], outs["logits"][:, :bits_all[i + 1]])
        terms.append(total)
        mains.append(main)
      terms = jnp.stack(terms)
      if dominance:
        # Gradients of each length's loss w.r.t. the head kernel, on detached
        # features: g_k = f^T dL_k/dlogits (exact for a linear head).
        feats_logits = jax.lax.stop_gradient(outs["logits"])

        def loss_of_logits(lg, i, b):
          o = jax.tree.map(jax.lax.stop_gradient, outs) | {"logits": lg, "codes": jnp.tanh(lg)}
          t, _ = per_length(o, b)
          if distill and i + 1 < len(bits_all):
            t = t + distill * nested.cascade_distillation(lg[:, :b], lg[:, :bits_all[i + 1]])
          return t

        feats = jax.lax.stop_gradient(outs["features"])
        grads = [feats.T @ jax.grad(loss_of_logits)(feats_logits, i, b)
                 for i, b in enumerate(bits_all)]
        weights = nested.dominance_weights(grads, bits_all)
      else:
        weights = jnp.ones((len(bits_all),), jnp.float32)
      loss = jnp.sum(weights * terms)
      return loss, (new_stats, jnp.stack(mains), weights, outs["codes"][:n])

    (loss, (new_stats, mains, weights, codes)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updated = state.apply_gradients(grads=grads)
    if new_stats is not None:
      updated = updated.replace(batch_stats=new_stats)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = updated.replace(
        params=keep(updated.params, state.params),
        opt_state=keep(updated.opt_state, state.opt_state),
        batch_stats=keep(updated.batch_stats, state.batch_stats),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step,
                                  state.first_nonfinite))
    signs = jnp.where(codes >= 0, 1.0, -1.0)
    out = {"loss": loss, "finite": finite,
           # Mean |batch-mean| of each bit: 1.0 when every code is identical.
           "bit_balance": jnp.mean(jnp.abs(jnp.mean(signs, axis=0))),
           "code_std": jnp.mean(jnp.std(codes, axis=0))}
    for i, b in enumerate(bits_all):
      out[f"loss_{b}bit"] = mains[i]
      out[f"weight_{b}bit"] = weights[i]
    return new_state, out

  return jax.jit(step_fn, in_shardings=(repl, data, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))


# ------------------------------------------------------------------ encoding


def make_encode_fn(config, mesh, output: str = "logits") -> Callable:
  """``(state, images_u8 [n, H, W, 3]) -> logits [n, max_bits]`` (no augmentation).

  ``output`` picks another encoder output instead (``'latents'``, ``'features'``).
  """
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  def encode(state, images):
    x = augment.resize(augment.to_unit(images), config.dataset.image_size)
    x = augment.normalize(x, config.dataset.normalization)
    variables = {"params": state.params}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    return state.apply_fn(variables, x, train=False)[output]

  return jax.jit(encode, in_shardings=(repl, data), out_shardings=data)


def encode_images(encode_fn, state, images: np.ndarray, mesh, batch_size: int = 512) -> np.ndarray:
  """Continuous hash outputs (pre-sign) for all images, in padded batches."""
  n_dev = mesh.devices.size
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  out = []
  for i in range(0, images.shape[0], batch_size):
    chunk = images[i:i + batch_size]
    rows = chunk.shape[0]
    if rows < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - rows,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(jax.device_get(encode_fn(state, chunk)))[:rows])
  return np.concatenate(out).astype(np.float32)


# -------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, config):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           create=True))


def restore_latest(manager, state: TrainState, log=print):
  """Restores the newest readable checkpoint; a damaged one is moved aside with a warning.

  A checkpoint that fails to restore (truncated files, missing metadata, wrong
  shapes) is renamed to ``<checkpoints>.corrupt/<step>`` so that training can
  write that step again, and the next older one is tried.
  Returns ``(state, step or None)``.
  """
  import orbax.checkpoint as ocp
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(state))
      return restored, step
    except Exception as e:  # truncated files, missing metadata, bad shapes ...
      src = os.path.join(str(manager.directory), str(step))
      dst_dir = str(manager.directory).rstrip("/") + ".corrupt"
      dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
      if jax.process_index() == 0:  # one host moves it; the others only skip it
        os.makedirs(dst_dir, exist_ok=True)
        os.replace(src, dst)
      manager.reload()
      reason = (str(e).strip().splitlines() or [""])[0].split(" See ")[0][:120]
      log(f"warning: checkpoint {step} in {manager.directory} is unreadable "
          f"({type(e).__name__}: {reason}); moved to {dst}; trying an older one")
  return state, None


# ------------------------------------------------------------------- driver


def make_mesh():
  # Auto axes: the compiler propagates shardings from the jit in/out shardings.
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _global_batch(sharding, local):
  return jax.make_array_from_process_local_data(sharding, local)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Trains (resuming from ``workdir`` if it holds checkpoints), then evaluates.

  Returns the final metrics dict (also written to ``workdir/metrics.json``).
  """
  os.makedirs(workdir, exist_ok=True)
  splits = input_pipeline.load(config)
  mesh = make_mesh()
  image_shape = (config.dataset.image_size, config.dataset.image_size, 3)
  state = create_train_state(config, jax.random.PRNGKey(config.seed), image_shape,
                             splits.num_classes)
  manager = checkpoint_manager(workdir, config)
  state, restored_step = restore_latest(manager, state, log)
  start = int(state.step)
  if restored_step is not None:
    log(f"resumed from checkpoint {restored_step} in {manager.directory}")
  repl = NamedSharding(mesh, P())
  state = jax.device_put(state, repl)
  centers = None
  if config.loss.name == "csq":
    centers = losses.hadamard_centers(splits.num_classes, max(bit_list(config)), config.seed)
  step_fn = make_train_step(config, mesh, centers)
  encode_fn = make_encode_fn(config, mesh)  # compiled once, for periodic and final evaluation
  data = NamedSharding(mesh, P("data"))
  writer = _summary_writer(workdir)
  total = int(config.train.steps)
  t_last, s_last, t_start = time.time(), start, time.time()
  last_good = restored_step
  history = []
  batches = input_pipeline.train_batches(
      splits.train_images, splits.train_labels, config.train.batch_size, config.seed, start,
      total, jax.process_index(), jax.process_count())
  step_metrics = None
  for step, images, labels in batches:
    state, step_metrics = step_fn(state, _global_batch(data, images), _global_batch(data, labels))
    done = step + 1
    is_log = done % config.train.log_every == 0 or done == total
    is_ckpt = done % config.train.checkpoint_every == 0 or done == total
    if is_log or is_ckpt:
      m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      _check_finite(config, state, last_good, manager, log)
      if is_log:
        now = time.time()
        rate = (done - s_last) / max(now - t_last, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        log(f"step {done}/{total} | loss {m['loss']:.4f} | bit balance "
            f"{m['bit_balance']:.3f} | {rate:.2f} steps/s | ETA {_fmt_time(eta)}")
        if m["bit_balance"] > 0.98 and done >= config.train.warmup_steps:
          log(f"warning: codes collapsed at step {done} (every bit has the same sign in "
              f"{m['bit_balance']:.0%} of the batch); see docs/training.md")
        t_last, s_last = now, done
        history.append({"step": done, **m})
        if writer:
          for k, v in m.items():
            writer.scalar(f"train/{k}", v, done)
          writer.scalar("train/learning_rate", float(learning_rate_schedule(config)(done)), done)
          writer.flush()
      if is_ckpt:
        import orbax.checkpoint as ocp
        manager.save(done, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        last_good = done
    if config.train.eval_every and done % config.train.eval_every == 0 and done < total:
      res = evaluate(config, state, splits, mesh, workdir=None, log=log, encode_fn=encode_fn)
      if writer:
        for b, r in res["by_bits"].items():
          writer.scalar(f"eval/map_{b}bit", r["map"], done)
  manager.wait_until_finished()
  if start >= total:
    log(f"training already finished at step {start}; evaluating")
  log(f"training done in {_fmt_time(time.time() - t_start)}")
  result = evaluate(config, state, splits, mesh, workdir=workdir, log=log, encode_fn=encode_fn)
  result["train_seconds"] = time.time() - t_start
  result["history"] = history
  if writer:
    for b, r in result["by_bits"].items():
      writer.scalar(f"eval/map_{b}bit", r["map"], total)
    writer.close()
  _write_json(os.path.join(workdir, "metrics.json"), result)
  return result


def _check_finite(config, state, last_good, manager, log):
  skipped = int(jax.device_get(state.nonfinite_steps))
  if skipped and config.train.on_nonfinite == "stop":
    first = int(jax.device_get(state.first_nonfinite))
    where = (f"the last good checkpoint is step {last_good} in {manager.directory}"
             if last_good is not None else "no checkpoint was written yet")
    raise TrainingError(f"non-finite loss or gradients at step {first}; the update was not "
                        f"applied and training stopped ({where}). Lower train.learning_rate "
                        f"or set train.on_nonfinite='skip'")
  if skipped:
    log(f"warning: {skipped} non-finite update(s) skipped so far (first at step "
        f"{int(jax.device_get(state.first_nonfinite))})")


def _summary_writer(workdir: str):
  if jax.process_index() != 0:
    return None
  from flax.metrics import tensorboard
  return tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
  os.replace(tmp, path)


# --------------------------------------------------------------- evaluation


def quantize_codes(config, train_emb, query_emb, db_emb, bits: int):
  """Codes of one length under ``config.quantizer`` (sign, or a post-hoc rotation)."""
  from nsh_jax import householder
  name = config.quantizer
  if name == "sign":
    return query_emb[:, :bits], db_emb[:, :bits]
  q = householder.fit(name, train_emb[:, :bits], seed=config.seed)
  return householder.apply(q, query_emb[:, :bits]), householder.apply(q, db_emb[:, :bits])


def evaluate(config, state, splits, mesh, workdir: Optional[str] = None, log=print,
             encode_fn: Optional[Callable] = None) -> dict:
  """Encodes query and database, reports the standard metrics for every length.

  Prints ``mAP@<k> <bits>-bit: <value>`` per length; with ``workdir`` writes
  codes (``codes/{query,database}_<bits>bit.npz``) and plots.
  """
  encode_fn = encode_fn or make_encode_fn(config, mesh)  # pass one in to avoid recompiles
  q_emb = encode_images(encode_fn, state, splits.query_images, mesh)
  db_emb = encode_images(encode_fn, state, splits.db_images, mesh)
  for name, emb in (("query", q_emb), ("database", db_emb)):
    if not np.all(np.isfinite(emb)):
      bad = int(np.sum(~np.all(np.isfinite(emb), axis=1)))
      raise TrainingError(f"the encoder gives non-finite outputs for {bad} of {emb.shape[0]} "
                          f"{name} images; the parameters have diverged (lower "
                          f"train.learning_rate, or resume from an earlier checkpoint)")
  train_emb = None
  if config.quantizer != "sign":
    train_emb = encode_images(encode_fn, state, splits.train_images, mesh)
  top_k = config.eval.top_k or None
  k_name = top_k if top_k else "all"
  result = {"top_k": top_k, "quantizer": config.quantizer, "by_bits": {}}
  for b in bit_list(config):
    qc, dc = quantize_codes(config, train_emb, q_emb, db_emb, b)
    r = metrics.evaluate_codes(qc, dc, splits.query_labels, splits.db_labels, top_k)
    result["by_bits"][b] = r
    log(f"mAP@{k_name} {b}-bit: {r['map']:.4f}  (P@H<=2 {r['p_at_h2']:.4f})")
    if workdir:
      cdir = os.path.join(workdir, "codes")
      os.makedirs(cdir, exist_ok=True)
      retrieval.save_index(os.path.join(cdir, f"query_{b}bit.npz"), retrieval.pack_codes(qc), b,
                           labels=splits.query_labels, metadata={"split": "query"})
      retrieval.save_index(os.path.join(cdir, f"database_{b}bit.npz"), retrieval.pack_codes(dc),
                           b, labels=splits.db_labels, metadata={"split": "database"})
  if workdir:
    np.savez(os.path.join(workdir, "codes", "embeddings.npz"), query=q_emb, database=db_emb,
             query_labels=splits.query_labels, database_labels=splits.db_labels)
    try:
      from nsh_jax import plots
      plots.write_all(os.path.join(workdir, "plots"), result, q_emb, splits.query_labels)
    except Exception as e:  # plotting must never lose a finished run's metrics
      log(f"warning: plots not written ({type(e).__name__}: {e})")
  return result
