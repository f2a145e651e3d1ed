"""H2Q / ITQ / LSH and the NHL pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nsh_jax import householder, models, nested


@pytest.mark.parametrize("k", [8, 16, 64, 128, 48])
def test_householder_product_is_orthogonal_and_matches_sequential(k):
  v = np.random.default_rng(k).normal(size=(k, k)).astype(np.float32)
  u = np.asarray(householder.householder_product(v), np.float64)
  np.testing.assert_allclose(u @ u.T, np.eye(k), atol=5e-5 * np.sqrt(k))
  seq = np.eye(k)
  for i in range(k):
    x = v[:, i].astype(np.float64)
    seq = seq @ (np.eye(k) - 2 * np.outer(x, x) / (x @ x))
  np.testing.assert_allclose(u, seq, atol=1e-3)


def test_identity_vectors_give_minus_identity():
  np.testing.assert_allclose(np.asarray(householder.householder_product(np.eye(16))),
                             -np.eye(16), atol=1e-6)


def structured_gaussian(seed=0, n=2000, k=16):
  rng = np.random.default_rng(seed)
  cube = np.sign(rng.normal(size=(n, k))) + 0.3 * rng.normal(size=(n, k))
  rot, _ = np.linalg.qr(rng.normal(size=(k, k)))
  return (cube @ rot).astype(np.float32)  # near a rotated hypercube


def test_h2q_beats_random_rotation():
  z = structured_gaussian()
  q = householder.fit_h2q(z, epochs=30)
  zs = z * (np.sqrt(16) / np.linalg.norm(z, axis=1, keepdims=True))
  learned = float(householder.h2q_loss(jnp.asarray(householder.apply(q, zs))))
  rot, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(16, 16)))
  random_loss = float(householder.h2q_loss(jnp.asarray(zs @ rot)))
  assert learned < 0.5 * random_loss
  # The returned rotation is the best held-out epoch's, and it improved on the start; at
  # learning rate 0.5 the held-out loss is lowest before the last epoch (epoch 23 of 30).
  assert q["val_loss"] == min(q["history"]) and q["val_loss"] < 0.9 * q["history"][0]
  bumpy = householder.fit_h2q(z, epochs=30, learning_rate=0.5)
  assert bumpy["history"][-1] > min(bumpy["history"]) == bumpy["val_loss"]
  u = q["projection"]
  np.testing.assert_allclose(u @ u.T, np.eye(16), atol=1e-4)


def test_itq_objective_never_increases_and_procrustes_is_orthogonal():
  z = structured_gaussian(1)
  q = householder.fit_itq(z, iterations=30, return_objectives=True)
  obj = np.array(q["objectives"])
  assert np.all(np.diff(obj) <= 1e-6 * obj[0])
  assert obj[-1] < 0.6 * obj[0]
  r = q["projection"]  # no PCA reduction at full bits: projection is the rotation
  np.testing.assert_allclose(r.T @ r, np.eye(16), atol=1e-4)
  pca = householder.fit_itq(z, bits=8)
  assert pca["projection"].shape == (16, 8)
  assert householder.fit("lsh", z, bits=12)["projection"].shape == (16, 12)
  with pytest.raises(ValueError, match="is not one of"):
    householder.fit("nope", z)
  with pytest.raises(ValueError, match=r"\[n, 16\]"):
    householder.apply(q, np.zeros((3, 5)))


@pytest.mark.parametrize("name", ["itq", "h2q"])
def test_fewer_rows_than_bits_still_give_orthonormal_projections(name):
  """42 rows of 128-d data, 64 bits: the PCA has only 41 directions of variance, the
  other 23 are completed orthonormally (the thin SVD would give 42 columns)."""
  z = np.random.default_rng(0).normal(size=(42, 128)).astype(np.float32)
  p = householder.fit(name, z, bits=64, seed=0, **({"epochs": 2} if name == "h2q" else {}))
  assert p["projection"].shape == (128, 64)
  np.testing.assert_allclose(p["projection"].T @ p["projection"], np.eye(64), atol=1e-4)
  assert householder.apply(p, z).shape == (42, 64)


def test_h2q_losses():
  x = jnp.array([[0.5, -2.0]])
  assert float(householder.h2q_loss(x, "l2")) == pytest.approx((0.25 + 1.0) / 2)
  assert float(householder.h2q_loss(x, "l1")) == pytest.approx((0.5 + 1.0) / 2)
  assert float(householder.h2q_loss(x, "min_entry")) == pytest.approx(
      np.log(np.exp(-0.25) + np.exp(-4.0)))
  p = 1 / (1 + np.exp(-np.array([0.5, -2.0])))
  assert float(householder.h2q_loss(x, "bit_var")) == pytest.approx(np.mean(p * (1 - p)))
  with pytest.raises(ValueError, match="unknown H2Q loss"):
    householder.h2q_loss(x, "nope")


def test_nested_prefix_property():
  """Each length's codes are tanh of the first b columns of ONE projection f W + c:
  checked against the head's own parameters, not against another slice of the output."""
  m = models.HashEncoder(bits=64, latent_dim=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  p = m.init(jax.random.PRNGKey(0), x)
  out = m.apply(p, x)
  f = np.asarray(out["features"], np.float64)
  w = np.asarray(p["params"]["hash"]["kernel"], np.float64)
  c = np.asarray(p["params"]["hash"]["bias"], np.float64)
  for b, code in zip([16, 32, 64], nested.prefixes(out["codes"], [16, 32, 64])):
    assert code.shape == (4, b)
    np.testing.assert_allclose(np.asarray(code), np.tanh(f @ w[:, :b] + c[:b]), rtol=1e-4,
                               atol=1e-5)


def _dominance_reference(grads, bits, beta=1.0):
  """NHL's dominance-aware weights written out from the formula (float64)."""
  k_total = len(bits)
  g = [np.asarray(x, np.float64) for x in grads]
  alpha = np.ones((k_total, k_total))
  for k in range(k_total - 1):
    gk = g[k][:, :bits[k]]
    tau = beta * np.sum(gk * gk) / (k_total - 1)
    for j in range(k + 1, k_total):
      dot = np.sum(gk * g[j][:, :bits[k]])
      alpha[k, j] = tau / -dot if -dot > tau else 1.0
      if j >= k + 2:
        alpha[k, j] = min(alpha[k, j], alpha[k, k + 1])
  w = np.array([np.prod([alpha[k, j] for k in range(j)]) for j in range(k_total)])
  return w * k_total / w.sum()


def test_dominance_weights():
  rng = np.random.default_rng(0)
  g = rng.normal(size=(10, 64))
  bits = [16, 32, 64]
  # Identical (non-conflicting) gradients: all weights 1.
  grads = [np.where(np.arange(64) < b, g, 0.0) for b in bits]
  np.testing.assert_allclose(np.asarray(nested.dominance_weights(grads, bits)), 1.0, rtol=1e-6)
  # Conflicts of several strengths, including the capped alpha_k,j for j >= k + 2.
  for trial in range(5):
    grads = [np.where(np.arange(64) < b, rng.normal(size=(10, 64)), 0.0) for b in bits]
    grads[1] = grads[1] - (1 + trial) * np.where(np.arange(64) < 32, grads[0], 0.0)
    grads[2] = grads[2] - 3 * trial * np.where(np.arange(64) < 64, grads[0], 0.0)
    want = _dominance_reference(grads, bits)
    got = np.asarray(nested.dominance_weights(grads, bits))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.sum() == pytest.approx(3.0, rel=1e-5)
  assert want[2] < 1.0  # the last trial conflicts strongly: the long length is down-weighted


def test_cascade_distillation():
  rng = np.random.default_rng(1)
  long = jnp.asarray(rng.normal(size=(6, 32)), jnp.float32)
  assert float(nested.cascade_distillation(long, long)) == pytest.approx(0.0, abs=1e-7)
  short = long[:, :16]
  d = float(nested.cascade_distillation(short, long))
  un = lambda u: u / np.linalg.norm(u, axis=1, keepdims=True)
  gl, gs = un(np.asarray(long)) @ un(np.asarray(long)).T, un(np.asarray(short)) @ un(np.asarray(short)).T
  assert d == pytest.approx(((gl - gs) ** 2).sum() / 36, rel=1e-5)
  g_teacher = jax.grad(lambda t: nested.cascade_distillation(short, t))(long)
  np.testing.assert_array_equal(np.asarray(g_teacher), 0.0)
  g_student = jax.grad(lambda s: nested.cascade_distillation(s, long))(short)
  assert np.abs(np.asarray(g_student)).max() > 0
