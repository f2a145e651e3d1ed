"""Start-up checks of a config: one line per problem, naming the key and the fix.

The lists of valid names come from the registries that dispatch on them, so a
newly registered loss, backbone, sorter, quantizer or optimizer is valid here
without an edit.
"""

from __future__ import annotations

from nsh_jax import (augment, encoder_input, householder, input_pipeline, models, objectives,
                     optim, protocol, sorting)
from nsh_jax.errors import ConfigError

__all__ = ["ConfigError", "validate"]

_CHOICES = {
    "model.backbone": models.BACKBONES.names(),
    "model.input": encoder_input.INPUTS.names(),
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


def _check_bits(bits) -> None:
  if not isinstance(bits, (tuple, list)) or not all(
      isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bits):
    raise ConfigError(f"config.model.bit_list must be a tuple of positive ints, e.g. (64,) or "
                      f"(16,32,64); got {bits!r}")
  if not bits:
    raise ConfigError("config.model.bit_list is empty; give at least one code length, e.g. (64,)")
  if len(set(bits)) != len(bits):
    raise ConfigError(f"config.model.bit_list has repeated lengths: {list(bits)}")


_POSITIVE = ("model.latent_dim", "train.batch_size", "train.learning_rate",
             "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
             "loss.temperature", "loss.sort_temperature", "dataset.image_size", "features.chunk")
_NON_NEGATIVE = ("train.warmup_steps", "train.eval_every", "loss.quant_weight",
                 "loss.balance_weight", "loss.kl_weight", "loss.cubic_weight",
                 "loss.bihalf_gamma", "eval.rerank", "train.steps", "train.epochs")
_FRACTIONS = ("dataset.min_scale", "dataset.jitter_prob", "dataset.gray_prob", "dataset.flip")


def check_length(config) -> None:
  """The training length is ``train.steps`` or ``train.epochs``: exactly one of them > 0."""
  steps, epochs = config.train.steps, config.train.get("epochs", 0) or 0
  if steps > 0 and epochs > 0:
    raise ConfigError(f"config.train.steps={steps} and config.train.epochs={epochs:g} both set the "
                      f"training length; set one of them to 0 (e.g. --config.train.epochs=0 to "
                      f"train {steps} steps)")
  if steps <= 0 and epochs <= 0:
    raise ConfigError("config.train.steps or config.train.epochs must be > 0 (a number of steps, "
                      "or of passes over the training images)")


def _check_ranges(config) -> None:
  for key in _POSITIVE:
    if not _get(config, key) > 0:
      raise ConfigError(f"config.{key} must be > 0; got {_get(config, key)}")
  for key in _NON_NEGATIVE:
    if _get(config, key) < 0:
      raise ConfigError(f"config.{key} must be >= 0; got {_get(config, key)}")
  check_length(config)
  for key in _FRACTIONS:
    if not 0 <= _get(config, key) <= 1:
      raise ConfigError(f"config.{key} must be in [0, 1]; got {_get(config, key)}")
  for key in ("dataset.val_queries_per_class", "dataset.val_queries"):
    if _get(config, key) < -1:
      raise ConfigError(f"config.{key} must be >= 0, or -1 (a tenth of the eligible images); "
                        f"got {_get(config, key)}")
  if config.eval.top_k is not None and config.eval.top_k < 0:
    raise ConfigError(f"config.eval.top_k must be >= 1 (0 = whole database); got {config.eval.top_k}")


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
  _check_bits(config.model.bit_list)
  _check_ranges(config)
  m, batch = config.loss.num_positives, config.train.batch_size
  if config.loss.name == "nsh" and not 1 <= m < batch:
    raise ConfigError(f"config.loss.num_positives={m} must be in [1, train.batch_size={batch}); "
                      f"lower it or raise the batch")
  if batch % device_count:
    raise ConfigError(f"config.train.batch_size={batch} is not divisible by the {device_count} "
                      f"devices; use a multiple of {device_count}")
  if config.model.pretrained and models.BACKBONES.get(config.model.backbone).load_pretrained is None:
    with_weights = [n for n in models.BACKBONES.names()
                    if models.BACKBONES.get(n).load_pretrained is not None]
    raise ConfigError(f"config.model.pretrained=True needs a backbone with pretrained weights: "
                      f"one of {with_weights}")
  encoder_input.INPUTS.get(config.model.input).check(config)
  kind, _ = input_pipeline.split_name(config.dataset.name)
  if kind == "lists" and config.dataset.protocol != "standard":
    raise ConfigError(f"config.dataset.protocol={config.dataset.protocol!r}: list datasets "
                      f"define their own protocol (test.txt queries database.txt); use 'standard'")
  if kind not in input_pipeline.DATASETS:
    raise ConfigError(f"config.dataset.name={config.dataset.name!r}: use one of "
                      f"{[n for n in input_pipeline.DATASETS.names() if n not in _WITH_PATH]}, "
                      f"npz:/path/file.npz, folder:/path/to/images or lists:/path/to/lists")


_WITH_PATH = ("npz", "folder", "lists")
