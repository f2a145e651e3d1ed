"""Optimizers by name, and the learning-rate schedule they share.

``lr(step)``: linear warm-up from 0 to ``train.learning_rate`` over
``train.warmup_steps``, then cosine decay to ``learning_rate * final_lr_fraction``
at ``train.steps``.  ``train.grad_clip > 0`` clips the global gradient norm first.
With ``model.frozen`` the backbone's parameters (the ``'backbone'`` subtree) are
outside the optimizer: no state, no update, no weight decay -- bit-identical.
"""

from __future__ import annotations

import jax
import optax

from nsh_jax.registry import Registry

__all__ = ["OPTIMIZERS", "learning_rate_schedule", "create_optimizer", "trainable_labels"]

# name -> fn(learning_rate schedule, train config) -> optax.GradientTransformation
OPTIMIZERS = Registry("optimizer", "train.optimizer")
OPTIMIZERS.register("adamw")(lambda lr, t: optax.adamw(lr, weight_decay=t.weight_decay))
OPTIMIZERS.register("sgd")(lambda lr, t: optax.chain(optax.add_decayed_weights(t.weight_decay),
                                                     optax.sgd(lr, momentum=0.9)))


def learning_rate_schedule(config) -> optax.Schedule:
  t = config.train
  warmup = min(int(t.warmup_steps), max(int(t.steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, warmup_steps=max(warmup, 1),
      decay_steps=max(int(t.steps), warmup + 1), end_value=t.learning_rate * t.final_lr_fraction)


def trainable_labels(config):
  """``params -> same tree of 'trainable' / 'frozen'`` (the backbone's when ``model.frozen``)."""
  def labels(params):
    return {name: jax.tree.map(lambda _, f=(config.model.frozen and name == "backbone"):
                               "frozen" if f else "trainable", sub)
            for name, sub in params.items()}
  return labels


def create_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  opt = OPTIMIZERS.get(t.optimizer)(learning_rate_schedule(config), t)
  if t.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
  if not config.model.frozen:
    return opt
  # optax.masked keeps no state for the frozen leaves (MaskedNode placeholders).
  return optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()},
                               trainable_labels(config))
