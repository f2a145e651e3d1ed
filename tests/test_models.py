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
