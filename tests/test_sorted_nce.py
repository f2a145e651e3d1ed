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
  with pytest.raises(ValueError, match="loss.sorter=.nope. is not one of"):
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


def reference_sorted_nce_grads(a, b, za, zb, m, temperature, sort_temperature=None):
  """Gradients of :func:`reference_sorted_nce` under the tie contract, float64.

  Materialised and written out by hand: d|x|/dx = 0 at 0 (np.sign(0) = 0), and
  the cotangent of each sorted value t_r is shared equally by every j with
  s_j == t_r.  Returns grads w.r.t. (a, b, za, zb).
  """
  a, b, za, zb = (np.asarray(x, np.float64) for x in (a, b, za, zb))
  n, d = a.shape
  tau_s = 1.0 / d if sort_temperature is None else sort_temperature
  s = a @ b.T / (2 * d) + 0.5
  dots = za @ zb.T
  g_s, g_dots = np.zeros((n, n)), np.zeros((n, n))
  for i in range(n):
    t = -np.sort(-s[i])
    diff = t[:, None] - s[i][None, :]
    logits = -np.abs(diff) / tau_s
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = p @ dots[i] / temperature
    neg_w = np.exp(c[m:] - np.logaddexp.reduce(c[m:]))
    g_c = np.zeros(n)
    for k in range(m):
      q = 1.0 / (1.0 + np.exp(-(c[k] - np.logaddexp.reduce(c[m:]))))  # sigmoid(c_k - neg)
      g_c[k] += q - 1.0
      g_c[m:] += (1.0 - q) * neg_w
    g_c /= n * m * temperature
    g_p = g_c[:, None] * dots[i][None, :]
    g_dots[i] = g_c @ p
    g_logits = p * (g_p - np.sum(p * g_p, axis=1, keepdims=True))
    sgn = np.sign(diff)
    g_t = np.sum(g_logits * -sgn / tau_s, axis=1)
    g_s[i] = np.sum(g_logits * sgn / tau_s, axis=0)
    for r in range(n):
      members = s[i] == t[r]
      g_s[i, members] += g_t[r] / members.sum()
  return (g_s @ b / (2 * d), g_s.T @ a / (2 * d), g_dots @ zb, g_dots.T @ za)


def _jax_grads(a, b, za, zb, m, temp, stemp):
  f = lambda *x: sorted_nce(*x, num_positives=m, temperature=temp, sort_temperature=stemp)
  return [np.asarray(g) for g in jax.grad(f, argnums=(0, 1, 2, 3))(
      *[jnp.asarray(x, jnp.float32) for x in (a, b, za, zb)])]


def test_tie_example_of_the_issue():
  """n=3, d=2, m=1: every anchor code [1, 1], candidates [1,-1], [-1,1], [1,1] (rows of s
  are [.5, .5, 1]).  Swapping the two tied candidates must not change the gradient."""
  rng = np.random.default_rng(0)
  a = np.ones((3, 2))
  b = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
  za = rng.normal(size=(3, 4))
  zb = rng.normal(size=(3, 4))
  za /= np.linalg.norm(za, axis=1, keepdims=True)
  zb /= np.linalg.norm(zb, axis=1, keepdims=True)
  got = _jax_grads(a, b, za, zb, 1, 0.3, 0.5)
  want = reference_sorted_nce_grads(a, b, za, zb, 1, 0.3, 0.5)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
  swap = np.array([1, 0, 2])
  swapped = _jax_grads(a[swap], b[swap], za[swap], zb[swap], 1, 0.3, 0.5)
  for g, gs in zip(got, swapped):
    np.testing.assert_allclose(gs, g[swap], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n,d,dz,m,temp,stemp", [
    (8, 4, 3, 2, 0.3, None), (16, 8, 5, 1, 0.1, 0.5), (33, 6, 4, 3, 0.5, 0.2),
    (64, 16, 8, 2, 0.3, 1.0 / 16)])
def test_gradients_with_sign_codes_match_tie_contract(n, d, dz, m, temp, stemp):
  """+-1 codes: Hamming similarities tie massively; every gradient follows the contract."""
  a, b, za, zb = random_problem(np.random.default_rng(11 * n + d), n, d, dz, ties=True)
  got = _jax_grads(a, b, za, zb, m, temp, stemp)
  want = reference_sorted_nce_grads(a, b, za, zb, m, temp, stemp)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)
  assert np.abs(got[0]).max() > 1e-4  # the codes do get a gradient through the sorter


@pytest.mark.parametrize("ties", [True, False])
def test_gradients_are_permutation_equivariant(ties):
  n = 48
  a, b, za, zb = random_problem(np.random.default_rng(21), n, 8, 6, ties=ties)
  perm = np.random.default_rng(22).permutation(n)
  g = _jax_grads(a, b, za, zb, 2, 0.3, None)
  gp = _jax_grads(a[perm], b[perm], za[perm], zb[perm], 2, 0.3, None)
  for x, xp in zip(g, gp):
    np.testing.assert_allclose(xp, x[perm], rtol=1e-4, atol=1e-6)


def test_reference_gradients_agree_with_finite_differences_without_ties():
  """The hand-written reference itself, where the loss is smooth (tanh codes)."""
  a, b, za, zb = random_problem(np.random.default_rng(5), 7, 4, 3)
  want = reference_sorted_nce_grads(a, b, za, zb, 2, 0.3, 0.2)
  args = [a, b, za, zb]
  for i in range(4):
    def f(x, i=i):
      xs = list(args)
      xs[i] = x
      return reference_sorted_nce(*xs, 2, 0.3, 0.2)
    np.testing.assert_allclose(want[i], numeric_grad(f, args[i]), rtol=1e-5, atol=1e-8)


def test_soft_sort_apply_vjp_with_ties_and_temperature():
  """soft_sort_apply's VJP against the dense form with symmetric |x| and shared sort
  cotangents (float64), for values, scores and the temperature."""
  rng = np.random.default_rng(8)
  s = np.round(rng.normal(size=(3, 40)), 1)  # many ties
  v = rng.normal(size=(3, 40))
  g = rng.normal(size=(3, 40))
  tau = 0.3

  def dense(s, v, tau):
    t = -np.sort(-s, axis=-1)
    diff = t[..., :, None] - s[..., None, :]
    p = np.exp(-np.abs(diff) / tau)
    p /= p.sum(-1, keepdims=True)
    return p, diff, t

  p, diff, t = dense(s, v, tau)
  gp = g[..., :, None] * v[..., None, :]
  gl = p * (gp - np.sum(p * gp, -1, keepdims=True))
  want_v = np.einsum("br,brj->bj", g, p)
  want_s = np.sum(gl * np.sign(diff) / tau, axis=-2)
  g_t = np.sum(-gl * np.sign(diff) / tau, axis=-1)
  for row in range(3):
    for r in range(40):
      members = s[row] == t[row, r]
      want_s[row, members] += g_t[row, r] / members.sum()
  want_tau = np.sum(gl * np.abs(diff) / tau ** 2)
  f = lambda s, v, tau: jnp.sum(sorting.soft_sort_apply(s, v, tau) * g)
  got = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(s, jnp.float32), jnp.asarray(v, jnp.float32),
                                        jnp.float32(tau))
  np.testing.assert_allclose(np.asarray(got[1]), want_v, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[0]), want_s, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(float(got[2]), want_tau, rtol=1e-3)


@pytest.mark.parametrize("n", [1, 2])
def test_soft_sort_apply_tiny_rows(n):
  s = jnp.zeros((2, n))
  v = jnp.arange(2.0 * n).reshape(2, n)
  out = sorting.soft_sort_apply(s, v, 0.5)
  np.testing.assert_allclose(np.asarray(out), np.broadcast_to(v.mean(-1, keepdims=True), (2, n)))
  g = jax.grad(lambda s: jnp.sum(sorting.soft_sort_apply(s, v, 0.5) ** 2))(s)
  assert np.all(np.isfinite(np.asarray(g)))


def test_nt_xent_matches_formula_and_optax():
  """losses.nt_xent against SimCLR's formula (float64) and optax.losses.ntxent."""
  import optax
  rng = np.random.default_rng(9)
  f1, f2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  u = np.concatenate([f1, f2])
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  logits = u @ u.T / 0.2
  np.fill_diagonal(logits, -np.inf)
  pos = np.concatenate([np.arange(6, 12), np.arange(6)])
  lse = np.log(np.sum(np.exp(logits), axis=1))
  want = np.mean(lse - logits[np.arange(12), pos])
  got = losses.nt_xent(jnp.asarray(f1, jnp.float32), jnp.asarray(f2, jnp.float32), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  labels = np.concatenate([np.arange(6), np.arange(6)])
  np.testing.assert_allclose(float(optax.losses.ntxent(jnp.asarray(u, jnp.float32), labels, 0.2)),
                             want, rtol=1e-5)



def test_zero_rows_keep_the_loss_and_its_gradient_finite():
  """A zero latent (e.g. a frozen backbone whose features are all zero, as Lite2's are at
  32 px) normalises to zero; the loss and its gradient stay finite (the gradient of
  ||x|| at 0 is 0/0)."""
  from nsh_jax.codes import l2_normalize
  f = jnp.zeros((4, 3)).at[1].set(jnp.array([3.0, 4.0, 0.0]))
  np.testing.assert_allclose(np.asarray(l2_normalize(f))[:2], [[0, 0, 0], [0.6, 0.8, 0]])
  g = jax.grad(lambda x: losses.nt_xent(x, x[::-1], 0.2))(f)
  assert np.all(np.isfinite(np.asarray(g)))

# ------------------------------------------- the fused, chunked kernel vs the composed form


def _composed_sorted_nce(a, b, za, zb, m, temperature, sort_temperature):
  """SortedNCE from its public pieces: the soft sort of the full [n, n] similarities
  (soft_sort_apply), then ranked_nce -- the form before the fused kernel."""
  sim = sorting.hamming_similarity(a, b)
  dots = jnp.einsum("id,jd->ij", za, zb, precision=jax.lax.Precision.HIGHEST)
  return losses.ranked_nce(sorting.soft_sort_apply(sim, dots, sort_temperature) / temperature, m)


# chunks of 1 row, padded chunks of 7, one chunk; the backward with the forward's sort
# order (n <= _SAVE_ORDER_MAX_N) and sorting again (larger n)
@pytest.mark.parametrize("rows,ties,keep_order", [(1, True, True), (7, False, True),
                                                  (7, True, False), (64, False, True),
                                                  (64, True, False)])
def test_fused_kernel_equals_the_composed_form(monkeypatch, rows, ties, keep_order):
  """Values and gradients (codes, latents, both temperatures) of the chunked custom VJP
  against autodiff through soft_sort_apply + ranked_nce, on random and +-1 codes, and
  permutation-equivariant."""
  n, m = 33, 3
  monkeypatch.setitem(losses._CHUNK_ELEMENTS, jax.default_backend(), rows * n)
  monkeypatch.setattr(losses, "_MIN_ROWS", 1)
  monkeypatch.setattr(losses, "_SAVE_ORDER_MAX_N", n if keep_order else n - 1)
  assert losses._chunking(n)[1] == min(rows, n)
  a, b, za, zb = (jnp.asarray(x, jnp.float32)
                  for x in random_problem(np.random.default_rng(rows), n, 8, 5, ties))
  args = (a, b, za, zb, jnp.float32(0.3), jnp.float32(0.15))
  fused = lambda a, b, za, zb, t, ts: losses.sorted_nce(a, b, za, zb, num_positives=m,
                                                         temperature=t, sort_temperature=ts)
  composed = lambda a, b, za, zb, t, ts: _composed_sorted_nce(a, b, za, zb, m, t, ts)
  grad = lambda f: jax.value_and_grad(f, argnums=tuple(range(6)))
  (v1, g1), (v2, g2) = grad(fused)(*args), grad(composed)(*args)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
  for x, y in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  perm = np.random.default_rng(1).permutation(n)
  _, gp = grad(fused)(*(x[perm] for x in args[:4]), *args[4:])
  for x, y in zip(gp[:4], g1[:4]):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y)[perm], rtol=1e-4, atol=1e-6)


def test_fused_kernel_memory_is_a_few_n_squared():
  """XLA's compiled memory of value_and_grad at n = 512: at most 8 float32 [n, n] arrays
  (the composed form holds ~40)."""
  n = 512
  spec = lambda d: jax.ShapeDtypeStruct((n, d), jnp.float32)
  f = jax.jit(jax.value_and_grad(lambda *x: sorted_nce(*x), argnums=(0, 1, 2, 3)))
  mem = f.lower(spec(64), spec(64), spec(128), spec(128)).compile().memory_analysis()
  if mem is None:
    pytest.skip("no compiled memory analysis on this backend")
  total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  assert total <= 8 * 4 * n * n, total / (4 * n * n)
