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


def test_conv3x3_equals_flax_conv_values_and_gradients():
  """Conv3x3 (bias optional, for GroupNorm's shift) is nn.Conv(3x3, SAME)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from nsh_jax import models
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


def test_group_norm_with_shift_equals_flax_group_norm_values_and_gradients():
  """group_norm(x, shift=b) is nn.GroupNorm(x + b): values, and gradients for x, scale, bias, b."""
  import flax.linen as nn
  import jax
  from nsh_jax import models
  k = jax.random.split(jax.random.PRNGKey(5), 4)
  x = jax.random.normal(k[0], (3, 5, 4, 16)) * 2.0 + 0.5
  scale, bias, shift = (jax.random.normal(kk, (16,)) for kk in k[1:])
  ref = nn.GroupNorm(num_groups=4)
  ref_fn = lambda x, s, b, t: ref.apply({"params": {"scale": s, "bias": b}}, x + t)
  ours_fn = lambda x, s, b, t: models.group_norm(x, s, b, 4, shift=t)
  np.testing.assert_allclose(ours_fn(x, scale, bias, shift), ref_fn(x, scale, bias, shift),
                             rtol=1e-4, atol=1e-4)
  # Independent formula: NumPy, float64.
  u = np.asarray(x + shift, np.float64).reshape(3, 5, 4, 4, 4)
  mu, var = u.mean(axis=(1, 2, 4), keepdims=True), u.var(axis=(1, 2, 4), keepdims=True)
  want = ((u - mu) / np.sqrt(var + 1e-6)).reshape(3, 5, 4, 16) * np.asarray(scale) + np.asarray(bias)
  np.testing.assert_allclose(ours_fn(x, scale, bias, shift), want, rtol=1e-4, atol=1e-4)
  w = jax.random.normal(jax.random.PRNGKey(6), x.shape)
  loss = lambda f: lambda *a: jnp.sum(jnp.tanh(f(*a)) * w)
  g1 = jax.grad(loss(ours_fn), argnums=(0, 1, 2, 3))(x, scale, bias, shift)
  g2 = jax.grad(loss(ref_fn), argnums=(0, 1, 2, 3))(x, scale, bias, shift)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.abs(b).max()))


def test_small_cnn_equals_plain_flax_layers():
  """SmallCNN (biases folded into GroupNorm) is the plain conv + bias -> nn.GroupNorm -> ReLU -> max-pool
  network with the same parameters, in values and in every parameter's gradient."""
  import flax.linen as nn
  import jax
  from nsh_jax import models

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(32, (2, 2), (2, 2), padding="VALID", name="stem")(x)
      x = nn.relu(nn.GroupNorm(num_groups=8, name="stem_norm")(x))
      for i, w in enumerate((64, 128, 256)):
        x = nn.Conv(w, (3, 3), name=f"conv{i}")(x)
        x = nn.max_pool(nn.relu(nn.GroupNorm(num_groups=8, name=f"norm{i}")(x)), (2, 2), (2, 2))
      return nn.relu(nn.Dense(256, name="fc")(jnp.mean(x, axis=(1, 2))))

  x = jax.random.normal(jax.random.PRNGKey(7), (4, 32, 32, 3))
  ours = models.SmallCNN()
  v = ours.init(jax.random.PRNGKey(8), x)
  leaves, tree = jax.tree.flatten(v)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  v = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(kk, a.shape)
                                for a, kk in zip(leaves, keys)])  # non-zero biases
  assert jax.tree.structure(v) == jax.tree.structure(Plain().init(jax.random.PRNGKey(0), x))
  # jitted: op-by-op, each of the many small ops compiles on its own (~1 min on 2 cores).
  np.testing.assert_allclose(jax.jit(ours.apply)(v, x), jax.jit(Plain().apply)(v, x),
                             rtol=1e-4, atol=1e-4)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  g1, g2 = jax.jit(jax.grad(loss(ours)))(v), jax.jit(jax.grad(loss(Plain())))(v)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))
