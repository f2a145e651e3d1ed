"""Start-up checks of a config: one line per problem, naming the key and the fix.

The lists of valid names come from the registries that dispatch on them, so a
newly registered loss, backbone, sorter, quantizer or optimizer is valid here
without an edit.
"""

from __future__ import annotations

from nsh_jax import (augment, householder, input_pipeline, models, objectives, optim, protocol,
                     sorting)
from nsh_jax.errors import ConfigError

__all__ = ["ConfigError", "validate"]

_CHOICES = {
    "model.backbone": models.BACKBONES.names(),
    "loss.name": objectives.OBJECTIVES.names(),
    "loss.sorter": sorting.SORTERS.names(),
    "quantizer": householder.QUANTIZERS.names(),
    "train.optimizer": optim.OPTIMIZERS.names(),
    "train.on_nonfinite": ("stop", "skip"),
    "loss.sort_temperature_unit": ("bit", "length"),
    "dataset.normalization": tuple(augment.NORMALIZATIONS),
    "dataset.protocol": protocol.PROTOCOLS,
}


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config, device_count: int = 1) -> None:
  """Raises :class:`ConfigError` for the first impossible value."""
  for key, choices in _CHOICES.items():
    value = _get(config, key)
    if value not in choices:
      raise ConfigError(f"config.{key}={value!r} is not one of {choices}")
  for name in config.eval.get("quantizers", ()):
    if name not in householder.QUANTIZERS.names():
      raise ConfigError(f"config.eval.quantizers has {name!r}, not one of "
                        f"{householder.QUANTIZERS.names()}")
  bits = config.model.bit_list
  if not isinstance(bits, (tuple, list)) or not all(
      isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bits):
    raise ConfigError(f"config.model.bit_list must be a tuple of positive ints, e.g. (64,) or "
                      f"(16,32,64); got {bits!r}")
  bits = list(bits)
  if not bits:
    raise ConfigError("config.model.bit_list is empty; give at least one code length, e.g. (64,)")
  if len(set(bits)) != len(bits):
    raise ConfigError(f"config.model.bit_list has repeated lengths: {bits}")
  positive = {"model.latent_dim": config.model.latent_dim, "train.steps": config.train.steps,
              "train.batch_size": config.train.batch_size,
              "train.learning_rate": config.train.learning_rate,
              "train.log_every": config.train.log_every,
              "train.checkpoint_every": config.train.checkpoint_every,
              "train.keep_checkpoints": config.train.keep_checkpoints,
              "loss.temperature": config.loss.temperature,
              "loss.sort_temperature": config.loss.sort_temperature,
              "dataset.image_size": config.dataset.image_size}
  for key, value in positive.items():
    if not value > 0:
      raise ConfigError(f"config.{key} must be > 0; got {value}")
  for key in ("train.warmup_steps", "train.eval_every", "loss.quant_weight", "loss.balance_weight",
              "loss.kl_weight", "loss.cubic_weight", "loss.bihalf_gamma",
              "dataset.val_queries_per_class"):
    if _get(config, key) < 0:
      raise ConfigError(f"config.{key} must be >= 0; got {_get(config, key)}")
  if config.eval.top_k is not None and config.eval.top_k < 0:
    raise ConfigError(f"config.eval.top_k must be >= 1 (0 = whole database); got {config.eval.top_k}")
  m, batch = config.loss.num_positives, config.train.batch_size
  if config.loss.name == "nsh" and not 1 <= m < batch:
    raise ConfigError(f"config.loss.num_positives={m} must be in [1, train.batch_size={batch}); "
                      f"lower it or raise the batch")
  if batch % device_count:
    raise ConfigError(f"config.train.batch_size={batch} is not divisible by the {device_count} "
                      f"devices; use a multiple of {device_count}")
  for key in ("min_scale", "jitter_prob", "gray_prob"):
    v = config.dataset[key]
    if not 0 <= v <= 1:
      raise ConfigError(f"config.dataset.{key} must be in [0, 1]; got {v}")
  if config.model.pretrained and models.BACKBONES.get(config.model.backbone).load_pretrained is None:
    with_weights = [n for n in models.BACKBONES.names()
                    if models.BACKBONES.get(n).load_pretrained is not None]
    raise ConfigError(f"config.model.pretrained=True needs a backbone with pretrained weights: "
                      f"one of {with_weights}")
  views = config.features.views
  if views and (views < 2 or not config.model.frozen or not config.model.pretrained):
    raise ConfigError(f"config.features.views={views}: the feature cache needs >= 2 views per "
                      f"image and a frozen pretrained backbone (model.frozen=True, "
                      f"model.pretrained=True); 0 turns it off")
  if config.features.chunk < 1 or config.dataset.flip < 0 or config.dataset.flip > 1:
    raise ConfigError("config.features.chunk must be >= 1 and config.dataset.flip in [0, 1]")
  kind, _ = input_pipeline.split_name(config.dataset.name)
  if kind not in input_pipeline.DATASETS:
    raise ConfigError(f"config.dataset.name={config.dataset.name!r}: use one of "
                      f"{[n for n in input_pipeline.DATASETS.names() if n != 'npz']} "
                      f"or npz:/path/file.npz")
