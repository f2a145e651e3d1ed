"""Optimizers by name, and the learning-rate schedule they share.

``lr(step)``: linear warm-up from 0 to ``train.learning_rate`` over
``train.warmup_steps``, then cosine decay to ``learning_rate * final_lr_fraction``
at ``train.steps``.  ``train.grad_clip > 0`` clips the global gradient norm first.
With ``model.frozen`` the backbone's parameters (the ``'backbone'`` subtree) are
outside the optimizer: no state, no update, no weight decay -- bit-identical; with
``model.train_blocks = K`` only its last ``K`` blocks (and head) train, at
``train.backbone_lr`` times the learning rate.
"""

from __future__ import annotations

import jax
import optax

from nsh_jax import models
from nsh_jax.registry import Registry

__all__ = ["OPTIMIZERS", "learning_rate_schedule", "create_optimizer", "trainable_labels",
           "frozen_below"]

# name -> fn(learning_rate schedule, train config) -> optax.GradientTransformation
OPTIMIZERS = Registry("optimizer", "train.optimizer")
OPTIMIZERS.register("adamw")(lambda lr, t: optax.adamw(lr, weight_decay=t.weight_decay))
OPTIMIZERS.register("sgd")(lambda lr, t: optax.chain(optax.add_decayed_weights(t.weight_decay),
                                                     optax.sgd(lr, momentum=0.9)))


def learning_rate_schedule(config) -> optax.Schedule:
  t = config.train
  # At least one warmup step (the schedule starts at 0) and one decay step after it.
  warmup = max(min(int(t.warmup_steps), int(t.steps) - 1), 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, warmup_steps=warmup,
      decay_steps=max(int(t.steps), warmup + 1), end_value=t.learning_rate * t.final_lr_fraction)


def frozen_below(config) -> int:
  """The backbone block below which everything (stem included) stays frozen: with
  ``model.train_blocks = K > 0`` the last ``K`` blocks (and the head convolution) train,
  so ``N - K`` for a backbone of ``N`` blocks; 0 otherwise (all train, or
  ``model.frozen``: none)."""
  k = int(config.model.get("train_blocks", -1))
  if config.model.frozen or k <= 0:
    return 0
  return max(models.BACKBONES.get(config.model.backbone).blocks - k, 0)


def trainable_labels(config):
  """``params -> the same tree of 'trainable' (the heads), 'backbone' (its trained part) or
  'frozen'`` (all of it with ``model.frozen``; the stem and the blocks below
  :func:`frozen_below` with ``model.train_blocks``)."""
  below = frozen_below(config)

  def part(key: str) -> str:
    if config.model.frozen:
      return "frozen"
    if key.startswith("stem") or (key.startswith("block") and int(key[5:]) < below):
      return "frozen"
    return "backbone"

  def labels(params):
    return {name: ({k: jax.tree.map(lambda _, p=part(k): p, v) for k, v in sub.items()}
                   if name == "backbone" else jax.tree.map(lambda _: "trainable", sub))
            for name, sub in params.items()}
  return labels


def create_optimizer(config) -> optax.GradientTransformation:
  """``train.optimizer`` with the schedule, global-norm clipping, and, where part of the
  backbone is frozen or trains at ``train.backbone_lr`` times the learning rate, one
  transformation per label of :func:`trainable_labels` (frozen leaves: no state, no update,
  no weight decay -- bit-identical)."""
  t = config.train
  opt = OPTIMIZERS.get(t.optimizer)(learning_rate_schedule(config), t)
  scale = float(t.get("backbone_lr", 1.0))
  if not config.model.frozen and not frozen_below(config) and scale == 1.0:
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip else opt
  if config.model.frozen:
    if t.grad_clip:
      opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
    # optax.multi_transform keeps no state for the frozen leaves (MaskedNode placeholders).
    return optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()},
                                 trainable_labels(config))
  schedule = learning_rate_schedule(config)
  backbone = OPTIMIZERS.get(t.optimizer)(lambda step: scale * schedule(step), t)
  parts = optax.multi_transform({"trainable": opt, "backbone": backbone,
                                 "frozen": optax.set_to_zero()}, trainable_labels(config))
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), parts) if t.grad_clip else parts
