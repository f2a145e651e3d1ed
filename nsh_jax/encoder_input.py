"""What the trainable encoder reads: one object per config, built once, used by every mode.

``config.model.input`` names a registered kind (``INPUTS``):

* ``'images'`` -- the model is backbone + heads and reads uint8 images; the step
  augments them (:func:`nsh_jax.augment.two_views`), evaluation resizes and
  normalises them.
* ``'features'`` -- a frozen pretrained backbone run once per image and view
  (:mod:`nsh_jax.feature_cache`); the model is the heads alone and reads cached
  features ``[F]``; the step draws two distinct cached views per example.
* ``'trunk'`` -- the same for the activations of a frozen trunk: the model is the
  backbone's last ``model.train_blocks`` blocks and head (trained) and the heads.

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

from nsh_jax import augment, distributed, feature_cache, models, optim
from nsh_jax.errors import ConfigError
from nsh_jax.files import digest_arrays, map_chunks
from nsh_jax.protocol import Splits
from nsh_jax.registry import Registry

__all__ = ["INPUTS", "EncoderInput", "ImagesInput", "FeaturesInput", "TrunkInput", "Features",
           "Encoder", "create", "two_cached_views"]

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

  @property
  def trains_backbone(self) -> bool:
    """Whether (part of) a pretrained backbone trains: its own features then get a ceiling
    row beside the frozen ones."""
    c = self.config.model
    return bool(c.pretrained and not c.frozen)

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


def _model(config, backbone: Optional[str], part: tuple = ()) -> models.HashEncoder:
  return models.HashEncoder(backbone=backbone, bits=max(int(b) for b in config.model.bit_list),
                            latent_dim=config.model.latent_dim, frozen=config.model.frozen,
                            head_hidden=config.model.head_hidden,
                            dtype=jnp.bfloat16 if config.model.bf16 else jnp.float32, part=part)


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

  @classmethod
  def check(cls, config):
    m = config.model
    blocks = models.BACKBONES.get(m.backbone).blocks
    if m.train_blocks > 0 and (m.frozen or not m.pretrained or not 0 < m.train_blocks < blocks):
      raise ConfigError(f"config.model.train_blocks={m.train_blocks} trains the last blocks of a "
                        f"pretrained backbone with blocks: it needs model.pretrained=True, "
                        f"model.frozen=False and fewer than the backbone's {blocks or 'no'} "
                        f"blocks (-1 trains all of it)")

  def model(self):
    below = optim.frozen_below(self.config)  # model.train_blocks: the trunk below frozen
    return _model(self.config, self.config.model.backbone,
                  (("frozen_below", below),) if below else ())

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


@INPUTS.register("trunk")
class TrunkInput(FeaturesInput):
  """Cached activations of a frozen backbone's trunk in (``features.views`` augmented views
  per training image, and the clean images): the model is the backbone's last
  ``model.train_blocks`` blocks and head, trained, and the hash heads.  The images path
  (``model.input='images'`` with the same ``model.train_blocks``) computes the same thing
  from pixels in every step, with fresh views: the accelerator's way."""
  name = "trunk"

  def __init__(self, config, splits=None, log=print):
    EncoderInput.__init__(self, config, splits, log)
    name, size = config.model.backbone, int(config.dataset.image_size)
    self.variables = models.pretrained_backbone(name, size)
    self.stop = optim.frozen_below(config)
    weights = digest_arrays(*jax.tree.leaves(self.variables))
    self.digest = _describe(config, weights, self.stop)
    self.weights = weights
    self.shape = tuple(jax.eval_shape(lambda v: models.BackboneOnly(name, stop=self.stop).apply(
        v, jnp.zeros((1, size, size, 3), jnp.float32)), self.variables).shape[1:])
    self.cached = None
    if splits is not None:
      self.cached = feature_cache.load_or_extract(config, splits, self.variables, weights, log,
                                                  stop=self.stop)
      self.train = self.cached.train_views

  @classmethod
  def check(cls, config):
    m, views = config.model, config.features.views
    blocks = models.BACKBONES.get(m.backbone).blocks
    if not (m.pretrained and not m.frozen and blocks and 0 < m.train_blocks < blocks
            and views >= 2):
      raise ConfigError(f"config.model.input='trunk' trains the last model.train_blocks blocks "
                        f"of a pretrained backbone with blocks on cached trunk activations: it "
                        f"needs model.pretrained=True, model.frozen=False, an EfficientNet-Lite "
                        f"backbone, 0 < model.train_blocks < its {blocks or 'no'} blocks (got "
                        f"{m.train_blocks}) and features.views >= 2 (got {views})")

  @property
  def trains_backbone(self) -> bool:
    return True

  def model(self):
    return _model(self.config, self.config.model.backbone, (("start", self.stop),))

  def init_variables(self, variables):
    return models.with_backbone(variables, self.variables)

  def views(self, key, batch, ids):
    return two_cached_views(key, batch, ids).reshape((-1,) + self.shape)

  def prepare(self, x):
    return x.reshape((x.shape[0],) + self.shape)

  def from_images(self, images):
    return feature_cache.clean_features(self.config, self.variables, self.stop)(images)

  def frozen_features(self):
    f = feature_cache.clean_split_features(self.config, self.splits, self.variables,
                                           self.weights, self.log)
    return Features(f["train"], f["query"], f["database"])


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
