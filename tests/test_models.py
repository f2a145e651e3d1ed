"""Keras -> Flax weight conversion: the Flax backbone reproduces the Keras forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nsh_jax import models


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_keras_conversion_matches_keras_forward(name):
  import tensorflow as tf
  keras_model = models.keras_backbone(name, weights=None, input_shape=(32, 32, 3))
  # Non-trivial BatchNorm statistics so their conversion is checked too.
  rng = np.random.default_rng(0)
  for layer in keras_model.layers:
    if type(layer).__name__ == "BatchNormalization":
      g, b, m, v = layer.get_weights()
      layer.set_weights([g * rng.uniform(0.5, 1.5, g.shape), b + 0.1 * rng.normal(size=b.shape),
                         0.1 * rng.normal(size=m.shape), rng.uniform(0.5, 2.0, v.shape)])
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  want = keras_model(x, training=False).numpy().mean(axis=(1, 2))
  enc = models.HashEncoder(backbone=name, bits=16, latent_dim=8)
  variables = enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  variables = models.load_keras_weights(variables, name, keras_model)
  got = enc.apply(variables, jnp.asarray(x))["features"]
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("patches", [True, False])
def test_conv3x3_equals_flax_conv_values_and_gradients(patches, monkeypatch):
  """Both paths of Conv3x3 (one matmul over shifted copies; XLA's convolution) are nn.Conv(3x3, SAME)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from nsh_jax import models
  monkeypatch.setattr(models, "_use_patches", lambda: patches)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 5))
  ours, ref = models.Conv3x3(4), nn.Conv(4, (3, 3))
  v = ours.init(jax.random.PRNGKey(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)  # non-zero bias too
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  g1 = jax.grad(loss(ours), argnums=(0, 1))(v, x)
  g2 = jax.grad(loss(ref), argnums=(0, 1))(v, x)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_patchify_equals_strided_flax_conv():
  import flax.linen as nn
  import jax
  from nsh_jax import models
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 10, 3))
  ours, ref = models.Patchify(6, 2), nn.Conv(6, (2, 2), (2, 2), padding="VALID")
  v = jax.tree.map(lambda a: a + 0.1, ours.init(jax.random.PRNGKey(3), x))
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)


def test_max_pool_2x2_equals_flax_max_pool():
  import flax.linen as nn
  import jax
  from nsh_jax import models
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 9, 8, 3))  # odd height: cropped like VALID
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
  g1 = jax.grad(lambda x: jnp.sum(jnp.sin(models.max_pool_2x2(x))))(x)
  g2 = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), (2, 2)))))(x)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)
