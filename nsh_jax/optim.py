"""Optimizers by name, and the learning-rate schedule they share.

``lr(step)``: linear warm-up from 0 to ``train.learning_rate`` over
``train.warmup_steps``, then cosine decay to ``learning_rate * final_lr_fraction``
at ``train.steps``.  ``train.grad_clip > 0`` clips the global gradient norm first.
"""

from __future__ import annotations

import optax

from nsh_jax.registry import Registry

__all__ = ["OPTIMIZERS", "learning_rate_schedule", "create_optimizer"]

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


def create_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  opt = OPTIMIZERS.get(t.optimizer)(learning_rate_schedule(config), t)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip else opt
