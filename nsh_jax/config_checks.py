"""Start-up checks of a config: one line per problem, naming the key and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
  """A bad configuration value; the message names the key and the fix."""


_CHOICES = {
    "model.backbone": ("small_cnn", "vgg16", "resnet50"),
    "loss.name": ("nsh", "contrastive", "dpsh", "csq", "dsh"),
    "loss.sorter": ("softsort", "ott"),
    "quantizer": ("sign", "h2q", "itq"),
    "train.optimizer": ("adamw", "sgd"),
    "train.on_nonfinite": ("stop", "skip"),
    "dataset.normalization": ("imagenet", "caffe"),
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
  bits = list(config.model.get("bit_list") or []) or [config.model.bits]
  for b in bits:
    if int(b) <= 0:
      raise ConfigError(f"config.model.bits/bit_list must be positive ints; got {b}")
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
  for key in ("train.warmup_steps", "train.eval_every", "loss.quant_weight", "loss.balance_weight"):
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
  if config.model.backbone == "small_cnn" and config.model.pretrained:
    raise ConfigError("config.model.pretrained=True needs backbone vgg16 or resnet50")
