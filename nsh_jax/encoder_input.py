"""What the trainable encoder reads: one object per config, built once, used by every mode.

``config.model.input`` names a registered kind (``INPUTS``):

* ``'images'`` -- the model is backbone + heads and reads uint8 images; the step
  augments them (:func:`nsh_jax.augment.two_views`), evaluation resizes and
  normalises them.
* ``'features'`` -- a frozen pretrained backbone run once per image and view
  (:mod:`nsh_jax.feature_cache`); the model is the heads alone and reads cached
  features ``[F]``; the step draws two distinct cached views per example.

Every kind gives the same things (:class:`EncoderInput`): the array training batches
are drawn from, the step's two views, the model inputs of each split, the model
inputs of *new* uint8 images (through the frozen backbone where there is one: what
``--mode=index`` needs), the frozen backbone's clean features (the baselines and the
ceiling row), and a digest of what the encoding depends on besides the trained
parameters.  Adding a kind is one subclass and one registration.

Built without splits (``create(config)``), an input only encodes new images: what the
modes that serve a trained run need, without loading its dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nsh_jax import augment, distributed, feature_cache, models
from nsh_jax.errors import ConfigError
from nsh_jax.files import digest_arrays, map_chunks
from nsh_jax.protocol import Splits
from nsh_jax.registry import Registry

__all__ = ["INPUTS", "EncoderInput", "ImagesInput", "FeaturesInput", "Features", "Encoder",
           "create", "two_cached_views"]

INPUTS = Registry("encoder input", "model.input")


@dataclasses.dataclass
class Features:
  """Clean frozen-backbone features ``[*, F]`` float32 of a protocol's three image sets."""
  train: np.ndarray
  query: np.ndarray
  database: np.ndarray


class EncoderInput:
  """What the model reads for one config (and, when given, its splits).

  Attributes a kind sets: ``train`` (what batches are drawn from, ``[N, ...]``),
  ``shape`` (one example as the model reads it), ``digest``.
  """
  name = ""

  def __init__(self, config, splits: Optional[Splits] = None, log=print):
    self.config, self.splits, self.log = config, splits, log
    self.train: Optional[np.ndarray] = None
    self.shape: tuple = ()
    self.digest = ""

  @classmethod
  def check(cls, config) -> None:
    """Raises :class:`ConfigError` when ``config`` cannot use this kind."""

  def model(self) -> models.HashEncoder:
    raise NotImplementedError

  def init_variables(self, variables: dict) -> dict:
    """The freshly initialised model's variables with any pretrained weights put in."""
    return variables

  def views(self, key, batch, ids) -> jax.Array:
    """``[2n, ...]``: two views of each example of ``batch`` ``[n, ...]`` (view 1 first),
    example ``i``'s randomness from ``fold_in(key, ids[i])``; runs inside the step."""
    raise NotImplementedError

  def prepare(self, x) -> jax.Array:
    """Model inputs as stored (:meth:`split`, :meth:`from_images`) -> what the model is
    applied to; runs inside the compiled encoder."""
    return x

  def split(self, which: str) -> np.ndarray:
    """The model inputs of ``'train'``, ``'query'`` or ``'database'``."""
    raise NotImplementedError

  def from_images(self, images: np.ndarray) -> np.ndarray:
    """The model inputs of new uint8 images ``[n, H, W, 3]``."""
    return images

  def frozen_features(self) -> Optional[Features]:
    """The pretrained backbone's clean features of the splits (``None`` without one)."""
    return None


def _model(config, backbone: Optional[str]) -> models.HashEncoder:
  return models.HashEncoder(backbone=backbone, bits=max(int(b) for b in config.model.bit_list),
                            latent_dim=config.model.latent_dim, frozen=config.model.frozen,
                            head_hidden=config.model.head_hidden,
                            dtype=jnp.bfloat16 if config.model.bf16 else jnp.float32)


def _describe(config, *extra) -> str:
  ds = config.dataset
  return digest_arrays(np.frombuffer(repr((config.model.input, config.model.backbone,
                                           int(ds.image_size), ds.normalization) + extra)
                                     .encode(), np.uint8))


@INPUTS.register("images")
class ImagesInput(EncoderInput):
  """uint8 images in; the backbone runs inside every step (trained or frozen)."""
  name = "images"

  def __init__(self, config, splits=None, log=print):
    super().__init__(config, splits, log)
    size = int(config.dataset.image_size)
    self.shape = (size, size, 3)
    self.train = None if splits is None else splits.train_images
    self.digest = _describe(config)

  def model(self):
    return _model(self.config, self.config.model.backbone)

  def init_variables(self, variables):
    if not self.config.model.pretrained:
      return variables
    return models.with_backbone(variables, models.pretrained_backbone(
        self.config.model.backbone, int(self.config.dataset.image_size)))

  def views(self, key, batch, ids):
    ds = self.config.dataset
    v1, v2 = augment.two_views(key, batch, ids, ds)
    return augment.normalize(jnp.concatenate([v1, v2]), ds.normalization)

  def prepare(self, x):
    ds = self.config.dataset
    return augment.normalize(augment.resize(augment.to_unit(x), int(ds.image_size)),
                             ds.normalization)

  def split(self, which):
    s = self.splits
    return {"train": s.train_images, "query": s.query_images, "database": s.db_images}[which]

  def frozen_features(self):
    if not self.config.model.pretrained:
      return None
    clean = feature_cache.clean_features(self.config, models.pretrained_backbone(
        self.config.model.backbone, int(self.config.dataset.image_size)))
    return Features(*(clean(self.split(w)) for w in ("train", "query", "database")))


@INPUTS.register("features")
class FeaturesInput(EncoderInput):
  """Cached features of a frozen pretrained backbone in; the model is the heads alone."""
  name = "features"

  def __init__(self, config, splits=None, log=print):
    super().__init__(config, splits, log)
    self.variables = models.pretrained_backbone(config.model.backbone,
                                                int(config.dataset.image_size))
    weights = digest_arrays(*jax.tree.leaves(self.variables))
    self.digest = _describe(config, weights)
    self.cached = None
    if splits is not None:
      self.cached = feature_cache.load_or_extract(config, splits, self.variables, weights, log)
      self.train = self.cached.train_views
    self.shape = (models.feature_width(config.model.backbone, int(config.dataset.image_size),
                                       self.variables),)

  @classmethod
  def check(cls, config):
    views = config.features.views
    if views < 2 or not config.model.frozen or not config.model.pretrained:
      raise ConfigError(f"config.model.input='features' caches a frozen pretrained backbone: "
                        f"it needs features.views >= 2 (got {views}), model.frozen=True and "
                        f"model.pretrained=True")

  def model(self):
    return _model(self.config, None)

  def views(self, key, batch, ids):
    return two_cached_views(key, batch, ids)

  def split(self, which):
    return getattr(self.cached, which)

  def from_images(self, images):
    return feature_cache.clean_features(self.config, self.variables)(images)

  def frozen_features(self):
    return Features(self.cached.train, self.cached.query, self.cached.database)


def two_cached_views(key, views, ids) -> jax.Array:
  """``[2n, F]``: two distinct views of each example's cached ``views`` ``[n, K, F]``,
  drawn per example from ``fold_in(key, id)`` (uniform over ordered pairs)."""
  k_views = views.shape[1]

  def pick(i):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    first = jax.random.randint(k1, (), 0, k_views)
    return first, (first + jax.random.randint(k2, (), 1, k_views)) % k_views

  first, second = jax.vmap(pick)(ids)
  take = lambda idx: jnp.take_along_axis(views, idx[:, None, None], axis=1)[:, 0]
  return jnp.concatenate([take(first), take(second)])


def create(config, splits: Optional[Splits] = None, log=print) -> EncoderInput:
  """The input of ``config.model.input`` (for ``splits``; without, for new images only)."""
  kind = INPUTS.get(config.model.input)
  kind.check(config)
  return kind(config, splits, log)


class Encoder:
  """``(state, model inputs [n, ...]) -> float32 [n, ...]``: one encoder output (``logits``,
  ``latents``, ``features``) in inference mode, compiled once, applied in zero-padded
  batches (a multiple of the device count) split over every device of every process and
  gathered back to every process."""

  def __init__(self, inputs: EncoderInput, mesh, output: str = "logits", batch: int = 512):
    self.mesh, self.inputs = mesh, inputs
    n_dev = mesh.devices.size
    self.batch = max(n_dev, (batch // n_dev) * n_dev)
    self._data = NamedSharding(mesh, P("data"))

    def encode(state, x):
      variables = {"params": state.params}
      if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
      return state.apply_fn(variables, inputs.prepare(x), train=False)[output]

    self._fn = jax.jit(encode, in_shardings=(NamedSharding(mesh, P()), self._data),
                       out_shardings=self._data)

  def __call__(self, state, x: np.ndarray) -> np.ndarray:
    def run(chunk, lo):
      sharded = jax.make_array_from_callback(chunk.shape, self._data, lambda i: chunk[i])
      y = self._fn(state, sharded)
      if lo == 0:  # every batch has one shape: only the first compiles (distributed.barrier)
        distributed.barrier("encoder_compiled")
      return _to_host(y)
    return map_chunks(run, x, self.batch).astype(np.float32)

  def images(self, state, images: np.ndarray) -> np.ndarray:
    """New uint8 images ``[n, H, W, 3]`` end to end (:meth:`EncoderInput.from_images`)."""
    return self(state, self.inputs.from_images(images))


def _to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) sharded array, whole, on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
