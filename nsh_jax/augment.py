"""Two-view image augmentation in JAX (one routine, used by every trainer).

Runs inside the jitted train step on the accelerator, per example under
``vmap``, so the host only gathers uint8 batches.  Each example's randomness is
``fold_in(step_key, global_example_index)``: the same views on 1 or N devices
and after a resume.

MoCo-v2 style (the NSH reimplementations): random resized crop (scale
``[min_scale, 1]``, aspect ``[3/4, 4/3]``), horizontal flip (probability
``flip``), colour jitter
(brightness / contrast / saturation / hue with probability ``jitter_prob``),
grayscale with probability ``gray_prob``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# ImageNet statistics (RGB, [0, 1] scale) and the Keras "caffe" BGR means.
_MEAN = jnp.array([0.485, 0.456, 0.406])
_STD = jnp.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_BGR = jnp.array([103.939, 116.779, 123.68])
_GRAY = jnp.array([0.299, 0.587, 0.114])


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 ``[..., H, W, 3]`` -> float32 in ``[0, 1]``."""
  return images.astype(jnp.float32) / 255.0


# name -> fn([0, 1] RGB) -> network input.  'caffe' matches Keras VGG16/ResNet50;
# 'lite' is (x - 127) / 128 on 0..255, what the EfficientNet-Lite weights expect.
NORMALIZATIONS = {
    "imagenet": lambda x: (x - _MEAN) / _STD,
    "caffe": lambda x: x[..., ::-1] * 255.0 - _CAFFE_MEAN_BGR,
    "lite": lambda x: (x * 255.0 - 127.0) / 128.0,
}


def normalize(images01: jax.Array, mode: str = "imagenet") -> jax.Array:
  """``[0, 1]`` RGB -> network input, by ``NORMALIZATIONS[mode]``."""
  return NORMALIZATIONS[mode](images01)


def resize(images01: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of ``[n, H, W, 3]`` to ``size x size`` (identity if equal)."""
  if images01.shape[1] == size and images01.shape[2] == size:
    return images01
  return jax.image.resize(images01, (images01.shape[0], size, size, 3), "bilinear")


def _random_resized_crop(key, image, size, min_scale):
  h, w = image.shape[0], image.shape[1]
  k_scale, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_scale, (), minval=min_scale, maxval=1.0)
  log_ratio = jax.random.uniform(k_ratio, (), minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3))
  ratio = jnp.exp(log_ratio)
  crop_w = jnp.clip(jnp.sqrt(area * ratio) * w, 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(area / ratio) * h, 1.0, h)
  y0 = jax.random.uniform(k_y, ()) * (h - crop_h)
  x0 = jax.random.uniform(k_x, ()) * (w - crop_w)
  scale = jnp.array([size / crop_h, size / crop_w])
  translation = -jnp.array([y0, x0]) * scale
  return jax.image.scale_and_translate(image, (size, size, 3), (0, 1), scale, translation,
                                       method="linear", antialias=False)


def _rgb_to_gray(image):
  return jnp.sum(image * _GRAY, axis=-1, keepdims=True)


def _hue_rotate(image, angle):
  """Rotates hue by ``angle`` radians in YIQ space (a linear, cheap hue shift)."""
  to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                      [0.211, -0.523, 0.312]])
  from_yiq = jnp.linalg.inv(to_yiq)
  c, s = jnp.cos(angle), jnp.sin(angle)
  rot = jnp.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
  return image @ (from_yiq @ rot @ to_yiq).T


def _color_jitter(key, image, strength):
  kb, kc, ks, kh, korder = jax.random.split(key, 5)
  b, c, s, h = strength
  image = image * jax.random.uniform(kb, (), minval=1 - b, maxval=1 + b)
  mean = jnp.mean(_rgb_to_gray(image))
  image = (image - mean) * jax.random.uniform(kc, (), minval=1 - c, maxval=1 + c) + mean
  gray = _rgb_to_gray(image)
  image = (image - gray) * jax.random.uniform(ks, (), minval=1 - s, maxval=1 + s) + gray
  image = _hue_rotate(image, jax.random.uniform(kh, (), minval=-h, maxval=h) * 2 * jnp.pi)
  return jnp.clip(image, 0.0, 1.0)


def augment_one(key: jax.Array, image01: jax.Array, cfg: Any) -> jax.Array:
  """One augmented view of one ``[H, W, 3]`` image in ``[0, 1]``."""
  k_crop, k_flip, k_jit, k_jit_p, k_gray = jax.random.split(key, 5)
  x = _random_resized_crop(k_crop, image01, cfg.image_size, cfg.min_scale)
  x = jnp.where(jax.random.uniform(k_flip) < cfg.flip, x[:, ::-1], x)
  strength = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
  x = jnp.where(jax.random.uniform(k_jit_p) < cfg.jitter_prob,
                _color_jitter(k_jit, x, strength), x)
  x = jnp.where(jax.random.uniform(k_gray) < cfg.gray_prob,
                jnp.broadcast_to(_rgb_to_gray(x), x.shape), x)
  return x


def two_views(key: jax.Array, images_u8: jax.Array, example_ids: jax.Array, cfg: Any):
  """Two independently augmented views ``[n, S, S, 3]`` (in ``[0, 1]``) of a batch.

  ``example_ids`` ``[n]`` are global positions in the step's batch, so every
  example's randomness is independent of how the batch is sharded.
  """
  images = to_unit(images_u8)

  def views(i, image):
    k = jax.random.fold_in(key, i)
    k1, k2 = jax.random.split(k)
    return augment_one(k1, image, cfg), augment_one(k2, image, cfg)

  return jax.vmap(views)(example_ids, images)
