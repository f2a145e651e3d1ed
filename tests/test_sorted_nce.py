"""sorted_nce and SoftSort against an independent float64 NumPy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nsh_jax import losses, sorted_nce, sorting


def reference_sorted_nce(a, b, za, zb, m, temperature, sort_temperature=None):
  """The definition, materialising E [n, n, dz], in float64 NumPy."""
  a, b, za, zb = (np.asarray(x, np.float64) for x in (a, b, za, zb))
  n, d = a.shape
  tau_s = 1.0 / d if sort_temperature is None else sort_temperature
  s = a @ b.T / (2 * d) + 0.5
  total = 0.0
  for i in range(n):
    t = -np.sort(-s[i])
    logits = -np.abs(t[:, None] - s[i][None, :]) / tau_s
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = p @ zb  # [n, dz]: candidates' latents in soft-sorted order
    c = e @ za[i] / temperature
    neg = np.log(np.sum(np.exp(c[m:])))
    for k in range(m):
      total += np.logaddexp(c[k], neg) - c[k]
  return total / (n * m)


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


def random_problem(rng, n, d, dz, ties=False):
  a = np.tanh(rng.normal(size=(n, d)))
  b = np.tanh(rng.normal(size=(n, d)))
  if ties:  # binary codes: many equal Hamming similarities
    a, b = np.sign(a), np.sign(b)
  za = rng.normal(size=(n, dz))
  zb = rng.normal(size=(n, dz))
  za /= np.linalg.norm(za, axis=1, keepdims=True)
  zb /= np.linalg.norm(zb, axis=1, keepdims=True)
  return a, b, za, zb


@pytest.mark.parametrize("n,d,dz,m,temp,stemp", [
    (6, 4, 3, 1, 0.3, None), (17, 8, 5, 2, 0.1, None), (40, 16, 8, 4, 0.5, 0.2),
    (64, 32, 16, 2, 0.3, 0.01), (3, 2, 2, 2, 1.0, None)])
@pytest.mark.parametrize("ties", [False, True])
def test_value_matches_reference(n, d, dz, m, temp, stemp, ties):
  a, b, za, zb = random_problem(np.random.default_rng(n + d), n, d, dz, ties)
  want = reference_sorted_nce(a, b, za, zb, m, temp, stemp)
  got = sorted_nce(a, b, za, zb, num_positives=m, temperature=temp, sort_temperature=stemp)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n,d,dz,m,temp,stemp", [
    (7, 4, 3, 2, 0.3, None), (12, 8, 4, 1, 0.5, 0.3), (16, 6, 5, 3, 0.2, 0.1)])
def test_gradients_match_reference(n, d, dz, m, temp, stemp):
  a, b, za, zb = random_problem(np.random.default_rng(7 * n), n, d, dz)
  args = [a, b, za, zb]
  grads = jax.grad(lambda *x: sorted_nce(*x, num_positives=m, temperature=temp,
                                         sort_temperature=stemp), argnums=(0, 1, 2, 3))(
      *[jnp.asarray(x, jnp.float32) for x in args])
  for i in range(4):
    def f(x, i=i):
      xs = list(args)
      xs[i] = x
      return reference_sorted_nce(*xs, m, temp, stemp)
    want = numeric_grad(f, args[i])
    np.testing.assert_allclose(np.asarray(grads[i]), want, rtol=2e-3, atol=2e-4)
  # The sorter is differentiated: the codes receive non-zero gradients.
  assert np.abs(np.asarray(grads[0])).max() > 1e-4


def test_latent_gradients_with_ties():
  """With tied similarities the loss is smooth in the latents: check those grads."""
  a, b, za, zb = random_problem(np.random.default_rng(3), 20, 8, 6, ties=True)
  g = jax.grad(lambda z: sorted_nce(a, b, za, z, num_positives=2))(jnp.asarray(zb, jnp.float32))
  want = numeric_grad(lambda z: reference_sorted_nce(a, b, za, z, 2, 0.3), zb)
  np.testing.assert_allclose(np.asarray(g), want, rtol=2e-3, atol=2e-4)


def test_jit_vmap_and_bfloat16():
  rng = np.random.default_rng(0)
  probs = [random_problem(rng, 10, 8, 4) for _ in range(3)]
  stacked = [np.stack([p[i] for p in probs]) for i in range(4)]
  batched = jax.jit(jax.vmap(lambda *x: sorted_nce(*x, num_positives=2)))(*stacked)
  for j, p in enumerate(probs):
    np.testing.assert_allclose(float(batched[j]), reference_sorted_nce(*p, 2, 0.3), rtol=2e-5)
  bf = [jnp.asarray(x, jnp.bfloat16) for x in probs[0]]
  got = sorted_nce(*bf, num_positives=2)
  assert got.dtype == jnp.float32
  want = reference_sorted_nce(*[np.asarray(x, np.float32) for x in bf], 2, 0.3)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  g = jax.grad(lambda c: sorted_nce(c, *bf[1:], num_positives=2))(bf[0])
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_bad_shapes_raise():
  a = np.zeros((5, 4))
  z = np.zeros((5, 3))
  with pytest.raises(ValueError, match="same shape"):
    sorted_nce(a, np.zeros((5, 6)), z, z)
  with pytest.raises(ValueError, match="num_positives"):
    sorted_nce(a, a, z, z, num_positives=5)
  with pytest.raises(ValueError, match="same n"):
    sorted_nce(a, a, np.zeros((4, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="2-D"):
    sorted_nce(np.zeros(5), np.zeros(5), z, z)


def test_soft_sort_rows_sum_to_one_and_harden():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(4, 9))
  p = np.asarray(sorting.soft_sort(s, 0.5))
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  hard = np.asarray(sorting.soft_sort(s, 1e-4))
  perm = np.argsort(-s, axis=-1)
  np.testing.assert_allclose(hard, np.eye(9)[perm], atol=1e-6)


@pytest.mark.parametrize("network_max_n", [4096, 0])  # sorting network / XLA sort
def test_soft_sort_apply_equals_dense_matrix(network_max_n, monkeypatch):
  monkeypatch.setattr(sorting, "_NETWORK_MAX_N", network_max_n)
  rng = np.random.default_rng(2)
  s = np.round(rng.normal(size=(3, 50)), 1)  # ties included
  v = rng.normal(size=(3, 50))
  for tau in (1e-3, 0.05, 0.3, 10.0):
    dense = np.einsum("brj,bj->br", np.asarray(sorting.soft_sort(s, tau), np.float64), v)
    fast = np.asarray(sorting.soft_sort_apply(s, v, tau))
    np.testing.assert_allclose(fast, dense, rtol=1e-5, atol=1e-5)


def test_hamming_similarity_of_sign_codes():
  rng = np.random.default_rng(4)
  a = np.sign(rng.normal(size=(5, 12)))
  b = np.sign(rng.normal(size=(7, 12)))
  ham = (a[:, None, :] != b[None, :, :]).sum(-1)
  np.testing.assert_allclose(np.asarray(sorting.hamming_similarity(a, b)), 1 - ham / 12, atol=1e-6)


def test_ott_sorter_is_a_soft_permutation_with_finite_gradients():
  rng = np.random.default_rng(5)
  a, b, za, zb = random_problem(rng, 8, 8, 4)
  p = np.asarray(sorting.ott_soft_permutation(jnp.asarray(rng.normal(size=(8,)))))
  np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-3)
  g = jax.grad(lambda c: sorted_nce(c, b, za, zb, sorter="ott"))(jnp.asarray(a, jnp.float32))
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
  with pytest.raises(ValueError, match="unknown sorter"):
    sorted_nce(a, b, za, zb, sorter="nope")


def test_quantization_helpers():
  x = jnp.array([-0.3, 0.0, 0.7])
  np.testing.assert_array_equal(np.asarray(losses.sign_ste(x)), [-1.0, 1.0, 1.0])
  np.testing.assert_allclose(np.asarray(jax.grad(lambda v: jnp.sum(losses.sign_ste(v) * 2))(x)),
                             [2.0, 2.0, 2.0])
  np.testing.assert_allclose(float(losses.quantization_penalty(x)),
                             np.mean((np.abs([-0.3, 0.0, 0.7]) - 1) ** 2), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 100, 257])
def test_sorting_network_orders_like_argsort(n):
  rng = np.random.default_rng(n)
  s = np.round(rng.normal(size=(2, 3, n)), 1).astype(np.float32)  # ties, leading dims
  order = np.asarray(jax.jit(sorting._bitonic_argsort_desc)(s))
  for row, o in zip(s.reshape(-1, n), order.reshape(-1, n)):
    assert sorted(o.tolist()) == list(range(n))  # a permutation
    np.testing.assert_array_equal(row[o], np.sort(row)[::-1])


def test_recurrence_adjoint_matches_finite_differences():
  """The hand-written VJP of h_r = a_r h_{r-1} + v_r (shared a over stacked v)."""
  from jax.test_util import check_grads
  rng = np.random.default_rng(6)
  decay = jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 9)))
  values = jnp.asarray(rng.normal(size=(2, 3, 9)))
  with jax.enable_x64(True):
    check_grads(sorting._linear_recurrence, (decay.astype(jnp.float64), values.astype(jnp.float64)),
                order=1, modes=["rev"])
  h = np.asarray(sorting._linear_recurrence(decay, values))
  want = np.zeros_like(h)
  for r in range(9):
    want[..., r] = (decay[..., r] * want[..., r - 1] if r else 0) + values[..., r]
  np.testing.assert_allclose(h, want, rtol=1e-5)
