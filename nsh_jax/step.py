"""The jitted, data-parallel train step ``(state, images_u8, labels) -> (state, metrics)``.

The batch is sharded over the mesh axis ``'data'``; params and optimizer state
are replicated; ``jax.jit`` inserts the gradient all-reduce.  Augmentation
runs inside the step, per example, keyed by the step and the example's global
position, so 1 and N devices (or processes) see the same views.

Per step, with ``K`` code lengths ``b_1 < ... < b_K`` (:func:`state.bit_list`)::

    L = sum_k w_k (L_{b_k} + distill_weight * D_k)

``L_b`` from :func:`objectives.length_loss`; ``D_k`` the cascade distillation
from ``b_{k+1}`` to ``b_k`` and ``w`` the dominance-aware weights of
:mod:`nsh_jax.nested` (``w = 1`` unless ``loss.dominance_weights``).
Non-finite updates are never applied: the state keeps its old params and
counts the skip.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import diagnostics, nested
from nsh_jax.codes import binarize, sign_ste
from nsh_jax.objectives import Pair, length_loss, sort_temperature, sorted_term
from nsh_jax.state import TrainState, bit_list

__all__ = ["make_train_step", "length_term", "head_kernel_gradients"]


def _forward(state: TrainState, params, x):
  """Encoder outputs of ``x`` in training mode, and the updated BatchNorm statistics."""
  variables = {"params": params}
  if state.batch_stats is None:
    return state.apply_fn(variables, x, train=True), None
  variables["batch_stats"] = state.batch_stats
  out, upd = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
  return out, upd["batch_stats"]


def length_term(config, pair: Pair, k: int):
  """``(L_{b_k} + distill * D_k, objective)`` for length index ``k``."""
  bits_all = bit_list(config)
  total, main = length_loss(config, pair, bits_all[k])
  if config.loss.distill_weight and k + 1 < len(bits_all):
    logits = jnp.concatenate([pair.out1["logits"], pair.out2["logits"]])
    total = total + config.loss.distill_weight * nested.cascade_distillation(
        logits[:, :bits_all[k]], logits[:, :bits_all[k + 1]])
  return total, main


def head_kernel_gradients(config, pair: Pair) -> list:
  """Each length's gradient ``g_k = h^T dL_k/dlogits`` ``[H, b_K]`` of the last hash
  Dense's kernel, with the encoder outputs detached; ``h`` is that layer's input
  (the features for a linear head, the hidden activations for an MLP head), both
  views stacked."""
  detached = jax.tree.map(jax.lax.stop_gradient, pair)
  n = detached.out1["logits"].shape[0]
  logits = jnp.concatenate([detached.out1["logits"], detached.out2["logits"]])
  hash_input = jnp.concatenate([detached.out1["hash_input"], detached.out2["hash_input"]])

  def loss_of_logits(lg, k):
    outs = [o | {"logits": lg[sl], "codes": jnp.tanh(lg[sl])}
            for o, sl in ((detached.out1, slice(None, n)), (detached.out2, slice(n, None)))]
    return length_term(config, dataclasses.replace(detached, out1=outs[0], out2=outs[1]), k)[0]

  return [hash_input.T @ jax.grad(loss_of_logits)(logits, k)
          for k in range(len(bit_list(config)))]


def _guarded_update(state: TrainState, grads, new_stats, loss):
  """``state.apply_gradients`` unless the loss or a gradient is non-finite."""
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  updated = state.apply_gradients(grads=grads)
  if new_stats is not None:
    updated = updated.replace(batch_stats=new_stats)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  return updated.replace(
      params=keep(updated.params, state.params),
      opt_state=keep(updated.opt_state, state.opt_state),
      batch_stats=keep(updated.batch_stats, state.batch_stats),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step,
                                state.first_nonfinite)), finite


def _step_metrics(config, loss, finite, codes, mains, weights) -> dict:
  signs = binarize(codes, jnp.float32)
  out = {"loss": loss, "finite": finite,
         # Mean |batch-mean| of each bit: 1.0 when every code is identical.
         "bit_balance": jnp.mean(jnp.abs(jnp.mean(signs, axis=0))),
         "code_std": jnp.mean(jnp.std(codes, axis=0))}
  for k, b in enumerate(bit_list(config)):
    out[f"loss_{b}bit"] = mains[k]
    out[f"weight_{b}bit"] = weights[k]
  return out


def _diagnostics(config, state, x, labels, codes, grads) -> dict:
  """:mod:`nsh_jax.diagnostics` for an NSH step: per length the mining precision of
  view-1 anchors over view-2 candidates (``codes`` of both views stacked), and the hash
  head's gradient norms."""
  cfg, n = config.loss, labels.shape[0]
  out = {"mining_chance": diagnostics.chance_precision(labels)}
  for b in bit_list(config):
    c1, c2 = codes[:n, :b], codes[n:, :b]
    if cfg.straight_through:
      c1, c2 = sign_ste(c1), sign_ste(c2)
    out[f"mining_{b}bit"], out[f"mining_others_{b}bit"] = diagnostics.mining_precisions(
        c1, c2, labels, cfg.num_positives, sort_temperature(cfg, state.step, b))

  def sorted_loss(params):
    outs, _ = _forward(state, params, x)
    p = Pair.of_stacked(outs, step=state.step)
    return sum(sorted_term(cfg, p, b) for b in bit_list(config))

  g_sorted = jax.grad(sorted_loss)(state.params)
  g_rest = jax.tree.map(jnp.subtract, grads, g_sorted)
  out["grad_hash_sorted"] = diagnostics.subtree_norm(g_sorted, "hash")
  out["grad_hash_rest"] = diagnostics.subtree_norm(g_rest, "hash")
  return out


def make_train_step(config, mesh, views: Callable, num_classes: int = 0) -> Callable:
  """Builds the jitted step ``(state, batch, labels) -> (state, metrics)``.

  ``views(key, batch, ids) -> x [2n, ...]`` makes the encoder's input from the batch
  (:meth:`nsh_jax.encoder_input.EncoderInput.views`); ``num_classes`` is what the
  supervised objectives need (CSQ's centres).
  """
  num_lengths = len(bit_list(config))
  dominance = config.loss.dominance_weights and num_lengths > 1
  # Labels reach only these metrics, never the loss; the sorted/rest gradient split
  # assumes unit length weights.
  diagnose = (config.train.diagnostics and config.loss.name == "nsh" and not dominance)
  base_key = jax.random.PRNGKey(config.seed)
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  def step_fn(state: TrainState, batch, labels):
    key = jax.random.fold_in(base_key, state.step)
    # Global positions in the batch, sharded like the batch (vmap needs both alike).
    ids = jax.lax.with_sharding_constraint(jnp.arange(batch.shape[0]), data)
    x = views(key, batch, ids)

    def loss_fn(params):
      outs, new_stats = _forward(state, params, x)
      pair = lambda: Pair.of_stacked(outs, step=state.step, labels=labels,
                                     num_classes=num_classes, seed=config.seed)
      # Each length splits the views itself: the cotangents then add up in the order the
      # step has always summed them (the same params to the last bit as before).
      terms, mains = zip(*[length_term(config, pair(), k) for k in range(num_lengths)])
      weights = (nested.dominance_weights(head_kernel_gradients(config, pair()),
                                          bit_list(config))
                 if dominance else jnp.ones((num_lengths,), jnp.float32))
      loss = jnp.sum(weights * jnp.stack(terms))
      # Only the codes leave the loss: every extra output is a buffer XLA must keep, and
      # changes how it fuses (and rounds) the step.
      return loss, (new_stats, jnp.stack(mains), weights, outs["codes"])

    (loss, (new_stats, mains, weights, codes)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state, finite = _guarded_update(state, grads, new_stats, loss)
    metrics = _step_metrics(config, loss, finite, codes[:batch.shape[0]], mains, weights)
    if diagnose:
      metrics |= _diagnostics(config, state, x, labels, codes, grads)
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(repl, data, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))
