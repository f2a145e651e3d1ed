"""CIBHash, GreedyHash and BiHalf against float64 NumPy transcriptions of their authors' code.

Each reference below re-states the authors' PyTorch (the repositories named in
``nsh_jax/objectives.py``) line by line in NumPy float64; its gradient is the
straight-through rule applied by hand: central differences of the smooth function
of the binary codes, at the codes, plus the terms that read the pre-sign outputs.
One deliberate difference: the project's one sign maps 0 to +1 (``torch.sign``: 0).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from helpers import EVAL_EXTRAS, TINY, run_main
from nsh_jax import codes, losses, objectives


# ----------------------------------------------------------- float64 references


def _sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _cos_rows(a, b, eps=1e-8):
  """``F.cosine_similarity(a, b)`` row by row."""
  out = np.empty(len(a))
  for i in range(len(a)):
    out[i] = a[i] @ b[i] / max(np.linalg.norm(a[i]) * np.linalg.norm(b[i]), eps)
  return out


def ref_similarity_loss(x, b):
  """``F.mse_loss(cos(b[:h], b[h:]), cos(x[:h], x[h:]))`` for an even batch."""
  h = len(b) // 2
  if h == 0:
    return 0.0
  return float(np.mean((_cos_rows(b[:h], b[h:2 * h]) - _cos_rows(x[:h], x[h:2 * h])) ** 2))


def ref_nt_xent(zi, zj, t):
  """CIBHash's ``NtXentLoss``: cosine / t, positives off-diagonal, CE summed / 2n."""
  n = len(zi)
  z = np.concatenate([zi, zj])
  sim = np.array([[a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8) for b in z]
                  for a in z]) / t
  total = 0.0
  for i in range(2 * n):
    pos = (i + n) % (2 * n)
    others = [sim[i, j] for j in range(2 * n) if j != i and j != pos]
    logits = np.array([sim[i, pos]] + others)
    total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0]
  return total / (2 * n)


def ref_kl(p, q):
  kl = p * (np.log(p + 1e-8) - np.log(q + 1e-8)) + (1 - p) * (
      np.log(1 - p + 1e-8) - np.log(1 - q + 1e-8))
  return float(np.mean(np.sum(kl, axis=1)))


def ref_bi_half(u):
  """Per column: the n // 2 largest entries +1 (equal values: lower row first), rest -1."""
  n, d = u.shape
  b = -np.ones((n, d))
  for k in range(d):
    order = sorted(range(n), key=lambda i: (-u[i, k], i))
    b[order[:n // 2], k] = 1.0
  return b


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = eps
    g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
  return g


def ref_cibhash(li, lj, t, w):
  """``(loss, dL/dli, dL/dlj)``: the code's forward; straight-through through the sign,
  the other view's probabilities detached in each KL."""
  sig = lambda v: 1 / (1 + np.exp(-v))
  pi, pj = sig(li), sig(lj)
  zi, zj = _sign(pi - 0.5), _sign(pj - 0.5)

  def f(zi_, zj_, pi_, pj_):
    return ref_nt_xent(zi_, zj_, t) + w * (ref_kl(pi_, pj) + ref_kl(pj_, pi)) / 2

  loss = f(zi, zj, pi, pj)
  gi = numeric_grad(lambda v: f(v, zj, pi, pj), zi) + numeric_grad(lambda v: f(zi, zj, v, pj), pi)
  gj = numeric_grad(lambda v: f(zi, v, pi, pj), zj) + numeric_grad(lambda v: f(zi, zj, pi, v), pj)
  return loss, gi * pi * (1 - pi), gj * pj * (1 - pj)


def ref_greedyhash(x, h, w):
  """``(loss, dL/dh)`` of one view: similarity loss on sign(h) + w * cubic penalty."""
  b = _sign(h)
  cubic = lambda v: float(np.mean(np.abs(np.abs(v) - 1) ** 3))
  loss = ref_similarity_loss(x, b) + w * cubic(h)
  grad = numeric_grad(lambda v: ref_similarity_loss(x, v), b) + w * numeric_grad(cubic, h)
  return loss, grad


def ref_bihalf(x, u, gamma, scale=1.0):
  """``(loss, dL/du)`` of one view whose loss is scaled by ``scale``: the layer's backward
  adds ``gamma (u - B) / numel`` to the incoming gradient, whatever its scale (and
  nothing for a batch of one, which has no pair and so no loss to back-propagate)."""
  b = ref_bi_half(u)
  loss = ref_similarity_loss(x, b)
  if len(u) < 2:
    return loss, np.zeros_like(u)
  return loss, scale * numeric_grad(lambda v: ref_similarity_loss(x, v), b) + gamma * (
      u - b) / u.size


# ------------------------------------------------------------------ inputs


def _inputs(case, n=6, bits=4, feat=5, seed=0):
  """Two views' (features, logits): random, ties at 0 / at the median, batch 1 or 2,
  all-equal."""
  rng = np.random.default_rng(seed)
  if case in ("batch1", "batch2"):
    n = int(case[-1])
  x = rng.normal(size=(2, n, feat))
  h = rng.normal(size=(2, n, bits))
  if case == "ties":
    h[:, ::2, 0] = 0.0           # sign ties at 0
    h[:, :, 1] = h[:, :1, 1]     # one bit equal over the whole batch
    h[:, 1:3, 2] = h[:, 3:4, 2]  # ties straddling the median
  if case == "all_equal":
    x[:] = x[:, :1]
    h[:] = h[:, :1]
  return x, h


def _outs(x, h):
  return [{"features": jnp.asarray(x[v], jnp.float32), "logits": jnp.asarray(h[v], jnp.float32)}
          for v in range(2)]


def _objective(name, x, h, **cfg):
  c = base.get_config().loss
  for k, v in cfg.items():
    c[k] = v
  fn = objectives.OBJECTIVES.get(name)

  def loss(logits):
    o1, o2 = _outs(x, h)
    o1["logits"], o2["logits"] = logits[0], logits[1]
    return fn(c, objectives.Pair(o1, o2), h.shape[-1])
  value, grad = jax.value_and_grad(loss)(jnp.asarray(h, jnp.float32))
  return float(value), np.asarray(grad, np.float64)


CASES = ["random", "ties", "batch1", "batch2", "all_equal"]


@pytest.mark.parametrize("case", CASES)
def test_cibhash_matches_the_authors_formula(case):
  x, h = _inputs(case)
  if case == "ties":
    h[:, ::2, 0] = 0.0  # sigmoid(0) - 1/2 = 0: the sign's tie
  got, grad = _objective("cibhash", x, h, temperature=0.3, kl_weight=0.05)
  want, gi, gj = ref_cibhash(h[0], h[1], 0.3, 0.05)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(grad, np.stack([gi, gj]), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_greedyhash_matches_the_authors_formula(case):
  x, h = _inputs(case)
  got, grad = _objective("greedyhash", x, h, cubic_weight=0.1)
  per_view = [ref_greedyhash(x[v], h[v], 0.1) for v in range(2)]
  assert got == pytest.approx(np.mean([p[0] for p in per_view]), rel=1e-5, abs=1e-7)
  np.testing.assert_allclose(grad, 0.5 * np.stack([p[1] for p in per_view]), rtol=1e-3,
                             atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_bihalf_matches_the_authors_formula(case):
  x, h = _inputs(case)
  got, grad = _objective("bihalf", x, h, bihalf_gamma=6.0)
  per_view = [ref_bihalf(x[v], h[v], 6.0, scale=0.5) for v in range(2)]  # L = (L_1 + L_2) / 2
  assert got == pytest.approx(np.mean([p[0] for p in per_view]), rel=1e-5, abs=1e-7)
  np.testing.assert_allclose(grad, np.stack([p[1] for p in per_view]), rtol=1e-3, atol=1e-6)


def test_bernoulli_kl_is_finite_jitted_at_saturated_bits():
  """Bits with sigmoid exactly 1 (or 0) in float32: the eps inside each log must survive
  XLA's simplifier (it folded (1 - q) + 1e-8 into 1 - q: log 0, NaN gradients, and
  CIBHash training stopped at step 82 on the CIFAR prefix)."""
  logits = np.array([[40.0, -40.0, 0.3], [-40.0, 40.0, -2.0]], np.float32)
  p, q = jax.nn.sigmoid(jnp.asarray(logits)), jax.nn.sigmoid(jnp.asarray(logits[::-1]))
  value, grad = jax.jit(jax.value_and_grad(losses.bernoulli_kl))(p, q)
  want = ref_kl(np.asarray(p, np.float64), np.asarray(q, np.float64))
  assert value == pytest.approx(want, rel=1e-5)
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("n", [1, 2, 7, 8])
def test_bi_half_splits_every_bit_in_half(n):
  u = np.random.default_rng(n).normal(size=(n, 5))
  u[:, 0] = 0.0  # all tied: the first floor(n / 2) rows win
  b = np.asarray(codes.bi_half(jnp.asarray(u, jnp.float32), 6.0))
  np.testing.assert_array_equal(b, ref_bi_half(u))
  assert (b == 1).sum(0).tolist() == [n // 2] * 5


def test_similarity_preservation_is_zero_when_codes_keep_the_cosines():
  x = np.random.default_rng(0).normal(size=(8, 3))
  assert float(losses.similarity_preservation(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(
      0.0, abs=1e-7)
  assert float(losses.similarity_preservation(jnp.asarray(x), -jnp.asarray(x))) == pytest.approx(
      0.0, abs=1e-7)  # negation keeps every cosine
  b = np.roll(x, 1, axis=0)  # other pairs
  assert float(losses.similarity_preservation(jnp.asarray(x), jnp.asarray(b))) == pytest.approx(
      ref_similarity_loss(x, b), rel=1e-5)


def test_baselines_bring_their_own_code_terms():
  """length_loss adds no quant / balance penalty to them (it does to NSH's objectives)."""
  c = base.get_config()
  x, h = _inputs("random")
  o1, o2 = _outs(x, h)
  o1["codes"], o2["codes"] = jnp.tanh(o1["logits"]), jnp.tanh(o2["logits"])
  for name in ("cibhash", "greedyhash", "bihalf"):
    c.loss.name = name
    total, main = objectives.length_loss(c, objectives.Pair(o1, o2), 4)
    assert float(total) == float(main)
  c.loss.name = "contrastive"
  total, main = objectives.length_loss(c, objectives.Pair(o1, o2), 4)
  assert float(total) > float(main)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cibhash", "greedyhash", "bihalf"])
def test_each_baseline_trains_through_main(tmp_path, name):
  wd = str(tmp_path / name)
  # Two of them the way benchmarks/pretrained_table.py runs every row (TINY's default): no
  # per-run baselines or plots (the closing table then has the model's rows alone).
  off = name != "cibhash"
  r = run_main(TINY + [f"--workdir={wd}", "--config.train.steps=4", f"--config.loss.name={name}"]
               + ([] if off else EVAL_EXTRAS))
  assert r.returncode == 0, r.stderr[-2000:]
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert m["config"]["loss"]["name"] == name
  assert 0 < m["by_bits"]["16"]["map"] <= 1
  assert ("baselines" in m) == (not off) and os.path.exists(os.path.join(wd, "plots")) == (not off)
  assert ("itq-pixels" in r.stdout) == (not off)
