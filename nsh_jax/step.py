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

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import augment, diagnostics, nested
from nsh_jax.codes import binarize, sign_ste
from nsh_jax.objectives import length_loss, sort_temperature, sorted_term
from nsh_jax.state import TrainState, bit_list

__all__ = ["make_train_step", "length_term", "head_kernel_gradients", "image_views", "cached_views"]


def image_views(config):
  """``(key, images_u8 [n, H, W, 3], ids [n]) -> x [2n, S, S, 3]``: two augmented,
  normalised views of each image (view 1 first)."""
  def views(key, images, ids):
    v1, v2 = augment.two_views(key, images, ids, config.dataset)
    return augment.normalize(jnp.concatenate([v1, v2]), config.dataset.normalization)
  return views


def cached_views(config):
  """``(key, features [n, K, F], ids [n]) -> x [2n, F]``: two distinct cached views of
  each example, drawn per example from ``fold_in(key, id)`` (uniform over ordered pairs)."""
  del config

  def views(key, feats, ids):
    k_views = feats.shape[1]

    def pick(i):
      k1, k2 = jax.random.split(jax.random.fold_in(key, i))
      first = jax.random.randint(k1, (), 0, k_views)
      return first, (first + jax.random.randint(k2, (), 1, k_views)) % k_views

    first, second = jax.vmap(pick)(ids)
    take = lambda idx: jnp.take_along_axis(feats, idx[:, None, None], axis=1)[:, 0]
    return jnp.concatenate([take(first), take(second)])
  return views


def _forward(state: TrainState, params, x):
  """Encoder outputs of ``x`` in training mode, and the updated BatchNorm statistics."""
  variables = {"params": params}
  if state.batch_stats is None:
    return state.apply_fn(variables, x, train=True), None
  variables["batch_stats"] = state.batch_stats
  out, upd = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
  return out, upd["batch_stats"]


def length_term(config, step, outs, labels, centers, k: int):
  """``(L_{b_k} + distill * D_k, objective)`` for length index ``k`` from the encoder
  outputs of both views stacked ``[2n, ...]`` (view 1 first)."""
  bits_all = bit_list(config)
  n = outs["codes"].shape[0] // 2
  view1 = jax.tree.map(lambda a: a[:n], outs)
  view2 = jax.tree.map(lambda a: a[n:], outs)
  total, main = length_loss(config, step, view1, view2, labels, bits_all[k], centers)
  if config.loss.distill_weight and k + 1 < len(bits_all):
    logits = outs["logits"]
    total = total + config.loss.distill_weight * nested.cascade_distillation(
        logits[:, :bits_all[k]], logits[:, :bits_all[k + 1]])
  return total, main


def head_kernel_gradients(config, step, outs, labels, centers) -> list:
  """Each length's gradient ``g_k = h^T dL_k/dlogits`` ``[H, b_K]`` of the last hash
  Dense's kernel, with the encoder outputs detached; ``h`` is that layer's input
  (the features for a linear head, the hidden activations for an MLP head)."""
  detached = jax.tree.map(jax.lax.stop_gradient, outs)

  def loss_of_logits(logits, k):
    return length_term(config, step, detached | {"logits": logits, "codes": jnp.tanh(logits)},
                       labels, centers, k)[0]

  return [detached["hash_input"].T @ jax.grad(loss_of_logits)(detached["logits"], k)
          for k in range(len(bit_list(config)))]


def _dominance_weights(config, step, outs, labels, centers):
  """:func:`head_kernel_gradients` turned into weights by :func:`nested.dominance_weights`."""
  return nested.dominance_weights(head_kernel_gradients(config, step, outs, labels, centers),
                                  bit_list(config))


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
  view-1 anchors over view-2 candidates, and the hash head's gradient norms."""
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
    view1 = jax.tree.map(lambda a: a[:n], outs)
    view2 = jax.tree.map(lambda a: a[n:], outs)
    return sum(sorted_term(cfg, state.step, view1, view2, b) for b in bit_list(config))

  g_sorted = jax.grad(sorted_loss)(state.params)
  g_rest = jax.tree.map(jnp.subtract, grads, g_sorted)
  out["grad_hash_sorted"] = diagnostics.subtree_norm(g_sorted, "hash")
  out["grad_hash_rest"] = diagnostics.subtree_norm(g_rest, "hash")
  return out


def make_train_step(config, mesh, centers=None, views: Optional[Callable] = None) -> Callable:
  """Builds the jitted step ``(state, batch, labels) -> (state, metrics)``.

  ``views(key, batch, ids) -> x [2n, ...]`` makes the encoder's input from the
  batch: :func:`image_views` (default; uint8 images) or :func:`cached_views`.
  """
  views = views or image_views(config)
  num_lengths = len(bit_list(config))
  dominance = config.loss.dominance_weights and num_lengths > 1
  # Labels reach only these metrics, never the loss; the sorted/rest gradient split
  # assumes unit length weights.
  diagnose = (config.train.diagnostics and config.loss.name == "nsh" and not dominance)
  base_key = jax.random.PRNGKey(config.seed)
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  def step_fn(state: TrainState, images, labels):
    key = jax.random.fold_in(base_key, state.step)
    # Global positions in the batch, sharded like the batch (vmap needs both alike).
    ids = jax.lax.with_sharding_constraint(jnp.arange(images.shape[0]), data)
    x = views(key, images, ids)

    def loss_fn(params):
      outs, new_stats = _forward(state, params, x)
      terms, mains = zip(*[length_term(config, state.step, outs, labels, centers, k)
                           for k in range(num_lengths)])
      weights = (_dominance_weights(config, state.step, outs, labels, centers) if dominance
                 else jnp.ones((num_lengths,), jnp.float32))
      loss = jnp.sum(weights * jnp.stack(terms))
      return loss, (new_stats, jnp.stack(mains), weights, outs["codes"])

    (loss, (new_stats, mains, weights, codes)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state, finite = _guarded_update(state, grads, new_stats, loss)
    metrics = _step_metrics(config, loss, finite, codes[:images.shape[0]], mains, weights)
    if diagnose:
      metrics |= _diagnostics(config, state, x, labels, codes, grads)
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(repl, data, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))
