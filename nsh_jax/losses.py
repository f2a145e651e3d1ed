"""Hashing losses as small pure functions: ``(arrays) -> scalar``.

* :func:`sorted_nce` -- NSH's SortedNCE (the public contract, exact and fast).
* :func:`nt_xent` -- contrastive hashing without sorting (CIBHash's contrastive term).
* :func:`similarity_preservation`, :func:`cubic_penalty`, :func:`bernoulli_kl` -- the
  unsupervised baselines' terms (GreedyHash, BiHalf, CIBHash; :mod:`nsh_jax.objectives`).
* :func:`dpsh_loss`, :func:`csq_loss`, :func:`dsh_loss` -- supervised bases for NHL.
* :func:`quantization_penalty`, :func:`bit_balance_penalty` -- code penalties.

All compute in float32 whatever the input dtype.  Nothing here imports the
retrieval stack (Numba) or the trainer.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from nsh_jax import sorting
from nsh_jax.codes import binarize, l2_normalize, sign_ste  # noqa: F401 -- sign_ste public here too

__all__ = ["sorted_nce", "symmetric_sorted_nce", "ranked_nce", "nt_xent", "sign_ste",
           "similarity_preservation", "cubic_penalty", "bernoulli_kl",
           "quantization_penalty", "bit_balance_penalty", "label_similarity", "dpsh_loss",
           "hadamard_centers", "csq_loss", "dsh_loss"]

_HI = jax.lax.Precision.HIGHEST


def _check_pair(name_a: str, a, name_b: str, b) -> None:
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"{name_a} and {name_b} must be 2-D [n, d]; got shapes "
                     f"{tuple(a.shape)} and {tuple(b.shape)}")
  if a.shape != b.shape:
    raise ValueError(f"{name_a} and {name_b} must have the same shape; got "
                     f"{tuple(a.shape)} and {tuple(b.shape)}")


def sorted_nce(codes_a: jax.Array, codes_b: jax.Array, latents_a: jax.Array,
               latents_b: jax.Array, *, num_positives: int = 2,
               temperature: float | jax.Array = 0.3,
               sort_temperature: Optional[float | jax.Array] = None,
               sorter: str = "softsort") -> jax.Array:
  r"""SortedNCE (Yu et al., IJCAI 2022), exact, O(n^2 log n) time, O(n (rows + d)) memory.

  Anchor ``i`` uses code ``a_i`` and latent ``za_i``; candidates ``j`` use
  ``b_j`` and ``zb_j`` (all ``n`` of them, the anchor's other view included).

  * ``s_ij = <a_i, b_j> / (2d) + 1/2``; ``tau_s = sort_temperature or 1/d``.
  * ``P_i[r, j] = softmax_j(-|sort_desc(s_i)_r - s_ij| / tau_s)`` (SoftSort).
  * ``E_ir = sum_j P_i[r, j] zb_j``; ``c_ir = <E_ir, za_i> / temperature``.
  * ranks ``1..m`` positive, ``m+1..n`` negative::

      L = mean_{i, k<=m} -log( e^{c_ik} / (e^{c_ik} + sum_{r>m} e^{c_ir}) )

  ``E`` and ``P_i`` are never formed: ``c_ir = sum_j P_i[r, j] <zb_j, za_i> / T``
  is the kernel of :func:`nsh_jax.sorting.soft_sort_apply` applied to a row of inner
  products.  With the default sorter the loss is one custom VJP over anchors in
  chunks (nothing ``[n, n]``; the backward recomputes each chunk; the values and
  tie-correct gradients of autodiff through ``soft_sort_apply`` + :func:`ranked_nce`).

  Args:
    codes_a: ``[n, d]`` relaxed codes of the anchors (e.g. ``tanh`` outputs).
    codes_b: ``[n, d]`` relaxed codes of the candidates.
    latents_a: ``[n, d_z]`` anchor latents (L2-normalised in NSH).
    latents_b: ``[n, d_z]`` candidate latents.
    num_positives: ``m``, the number of top ranks treated as positives.
    temperature: contrastive temperature.
    sort_temperature: SoftSort temperature in similarity units (the OT sorter's
      entropic epsilon); ``None`` means ``1/d`` (one Hamming bit).
    sorter: ``'softsort'`` (exact fast path, default) or ``'ott'``.

  Returns:
    Scalar float32 loss.  Use ``jax.vmap`` for a leading batch of problems.
  """
  codes_a, codes_b = jnp.asarray(codes_a), jnp.asarray(codes_b)
  latents_a, latents_b = jnp.asarray(latents_a), jnp.asarray(latents_b)
  _check_pair("codes_a", codes_a, "codes_b", codes_b)
  _check_pair("latents_a", latents_a, "latents_b", latents_b)
  n, d = codes_a.shape
  if latents_a.shape[0] != n:
    raise ValueError(f"codes and latents must have the same n; got codes "
                     f"{tuple(codes_a.shape)} and latents {tuple(latents_a.shape)}")
  m = int(num_positives)
  if m < 1 or n <= m:
    raise ValueError(f"need 1 <= num_positives < n; got num_positives={m}, n={n}")
  if sort_temperature is None:
    sort_temperature = 1.0 / d
  if sorter == "softsort":
    return _fused_sorted_nce(codes_a, codes_b, latents_a, latents_b,
                             jnp.asarray(sort_temperature, jnp.float32),
                             jnp.asarray(temperature, jnp.float32), m)
  sim = sorting.hamming_similarity(codes_a, codes_b)  # [n, n]
  dots = jnp.einsum("id,jd->ij", latents_a.astype(jnp.float32),
                    latents_b.astype(jnp.float32), precision=_HI)  # <za_i, zb_j>
  logits = sorting.sort_gather(sim, dots, sort_temperature, sorter) / temperature
  return ranked_nce(logits, m)


def _ranked_nce_by_rank(logits: jax.Array, m: int) -> jax.Array:
  """``sum_{k<m} [logaddexp(c_k, lse_{r>=m} c_r) - c_k]`` over the rank axis 0 of
  ``[n_ranks, ...]`` -> ``[...]``."""
  negatives = jax.nn.logsumexp(logits[m:], axis=0, keepdims=True)
  positives = logits[:m]
  return jnp.sum(jnp.logaddexp(positives, negatives) - positives, axis=0)


def ranked_nce(logits: jax.Array, num_positives: int) -> jax.Array:
  """NCE over ranked logits: ranks ``< m`` positive, the rest negative.

  ``L = mean_{i, k<m} [logaddexp(c_ik, lse_{r>=m} c_ir) - c_ik]`` for logits
  ``c`` of shape ``[n, n_ranks]`` (a proper log-sum-exp, no double softmax).
  """
  return (jnp.sum(_ranked_nce_by_rank(logits.T, num_positives))
          / (logits.shape[0] * num_positives))


# --------------------------------------------------------------- fused SortedNCE kernel
#
# SortedNCE with SoftSort as one custom VJP over (codes, latents) that never holds an
# [n, n] array: anchors go in chunks (a lax.scan), each chunk forming its own [n, rows]
# similarities and latent inner products (candidates first: the layout the sorting
# kernels vectorise), sorting them, applying the soft sort (sorting.sorted_apply_fwd)
# and the ranked NCE.  The forward keeps only its inputs; the
# backward recomputes each chunk and turns the chunk's [rows, n] cotangents straight into
# code and latent cotangents (small matmuls), so memory is O(rows * n + n * d) in forward
# and backward alike, and the calls of one train step keep nothing [n, n] in between.

# Elements of one chunk's [n, rows] arrays: cache-sized on CPU (the sorting network and
# the scans stream over a chunk once per stage), but at least _MIN_ROWS anchors wide (the
# vectors every stage moves); on accelerators large enough that the loop over chunks
# stays short (n = 16,384: 16 chunks) and the ~40 such arrays of a chunk still fit.
_CHUNK_ELEMENTS = {"cpu": 1 << 15}
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
_MIN_ROWS = 64
# Up to this n the forward keeps each chunk's sort order (int16, n^2 / 2 float32-equivalents
# per call: 32 MiB at 4,096) and the backward does not sort again (~1/5 of the time);
# above it the backward recomputes the order, so a step's six calls hold nothing n^2.
_SAVE_ORDER_MAX_N = 4096


def _chunking(n: int):
  """``(chunks, rows)``: ``chunks * rows >= n`` anchors in chunks of ``rows``."""
  budget = _CHUNK_ELEMENTS.get(jax.default_backend(), _CHUNK_ELEMENTS_ACCELERATOR)
  rows = max(1, min(n, max(_MIN_ROWS, budget // n)))
  chunks = -(-n // rows)
  return chunks, -(-n // chunks)


def _chunk_forward(ca, za, cb, zb, tau_s, temperature, m, order=None):
  """One chunk of anchors ``ca [c, d]``, ``za [c, dz]`` against every candidate.

  Returns the per-anchor losses ``[c]`` and what the backward reuses: the sort order,
  the soft-sort residuals and the ranked logits, each ``[n, c]`` (rank or candidate
  first).  ``order``: the chunk's sort order if the forward kept it (else sorted here)."""
  sim = sorting.hamming_similarity(cb, ca)  # [n, c]: s_ij at [j, i]
  dots = jnp.einsum("jd,id->ji", zb, za, precision=_HI)  # <za_i, zb_j> at [j, i]
  order = (sorting.argsort_desc(sim, axis=0) if order is None
           else order.astype(jnp.int32))
  x = jnp.take_along_axis(sim, order, axis=0)
  v = jnp.take_along_axis(dots, order, axis=0)
  out, residuals = sorting.sorted_apply_fwd(x, v, tau_s)
  logits = out / temperature
  return _ranked_nce_by_rank(logits, m), (order, residuals, logits)


def _padded_chunks(x, chunks: int, rows: int):
  """``[n, k]`` -> ``[chunks, rows, k]``, zero rows appended."""
  pad = chunks * rows - x.shape[0]
  return jnp.pad(x, ((0, pad), (0, 0))).reshape(chunks, rows, x.shape[1])


def _as_f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused_sorted_nce(codes_a, codes_b, latents_a, latents_b, tau_s, temperature, m):
  return _fused_fwd(codes_a, codes_b, latents_a, latents_b, tau_s, temperature, m)[0]


def _fused_fwd(codes_a, codes_b, latents_a, latents_b, tau_s, temperature, m):
  ca, cb, za, zb = _as_f32(codes_a, codes_b, latents_a, latents_b)
  n = ca.shape[0]
  chunks, rows = _chunking(n)
  valid = _padded_chunks(jnp.ones((n, 1), jnp.float32), chunks, rows)[..., 0]
  keep_order = n <= _SAVE_ORDER_MAX_N

  def body(total, xs):
    ca_c, za_c, valid_c = xs
    per_anchor, (order, _, _) = _chunk_forward(ca_c, za_c, cb, zb, tau_s, temperature, m)
    return total + jnp.sum(per_anchor * valid_c), (order.astype(jnp.int16) if keep_order
                                                   else None)

  total, orders = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                               (_padded_chunks(ca, chunks, rows),
                                _padded_chunks(za, chunks, rows), valid))
  return total / (n * m), (codes_a, codes_b, latents_a, latents_b, tau_s, temperature, orders)


def _fused_bwd(m, residuals, g):
  codes_a, codes_b, latents_a, latents_b, tau_s, temperature, orders = residuals
  ca, cb, za, zb = _as_f32(codes_a, codes_b, latents_a, latents_b)
  n, d = ca.shape
  chunks, rows = _chunking(n)
  weight = _padded_chunks(jnp.full((n, 1), g / (n * m), jnp.float32), chunks, rows)[..., 0]
  mm = lambda x, y: jnp.matmul(x, y, precision=_HI)

  def body(carry, xs):
    d_cb, d_zb, d_tau_s, d_temp = carry
    ca_c, za_c, w, order_c = xs
    _, (order, res, logits) = _chunk_forward(ca_c, za_c, cb, zb, tau_s, temperature, m,
                                             order_c)
    g_logits = jax.vjp(lambda l: _ranked_nce_by_rank(l, m), logits)[1](w)[0]
    d_temp = d_temp - jnp.sum(g_logits * logits) / temperature  # logits = out / T
    d_x, d_v, d_tau = sorting.sorted_apply_bwd(res, g_logits / temperature)
    # From rank order back to candidate order: the inverse permutation, then gathers.
    iota = jax.lax.broadcasted_iota(order.dtype, order.shape, 0)
    inverse = jnp.zeros_like(order).at[order, jnp.arange(order.shape[1])].set(iota)
    d_sim = jnp.take_along_axis(d_x, inverse, axis=0) / (2.0 * d)  # s = a b^T / (2d) + 1/2
    d_dots = jnp.take_along_axis(d_v, inverse, axis=0)  # [n, c]
    return ((d_cb + mm(d_sim, ca_c), d_zb + mm(d_dots, za_c), d_tau_s + d_tau, d_temp),
            (mm(d_sim.T, cb), mm(d_dots.T, zb)))

  init = (jnp.zeros_like(cb), jnp.zeros_like(zb), jnp.zeros((), jnp.float32),
          jnp.zeros((), jnp.float32))
  (d_cb, d_zb, d_tau_s, d_temp), (d_ca, d_za) = jax.lax.scan(
      body, init, (_padded_chunks(ca, chunks, rows), _padded_chunks(za, chunks, rows), weight,
                   orders))
  like = lambda grad, x: grad.astype(jnp.result_type(x))
  return (like(d_ca.reshape(-1, d)[:n], codes_a), like(d_cb, codes_b),
          like(d_za.reshape(-1, za.shape[1])[:n], latents_a), like(d_zb, latents_b),
          like(d_tau_s, tau_s), like(d_temp, temperature))


_fused_sorted_nce.defvjp(_fused_fwd, _fused_bwd)


def symmetric_sorted_nce(codes_1, codes_2, latents_1, latents_2,
                         **kwargs) -> jax.Array:
  """Average of SortedNCE with each view as the anchor: the NSH training loss."""
  return 0.5 * (sorted_nce(codes_1, codes_2, latents_1, latents_2, **kwargs)
                + sorted_nce(codes_2, codes_1, latents_2, latents_1, **kwargs))


def nt_xent(features_1: jax.Array, features_2: jax.Array,
            temperature: float = 0.3) -> jax.Array:
  """NT-Xent (SimCLR) between two views ``[n, d]``, both directions, cosine similarity.

  For ``u = normalise([f1; f2])`` (``2n`` rows), row ``i``'s positive is its other
  view and the other ``2n - 2`` rows are negatives:
  ``L = mean_i -log softmax_{j != i}(u_i . u_j / T)[pos(i)]``.

  ``optax.losses.ntxent`` gives the same values (a test checks it) but forms
  the similarities by broadcasting to ``[2n, 2n, d]``: ``O(n^2 d)`` memory, about
  1 GB at n = 1024, d = 64, where this one matmul needs ``O(n^2)``.
  """
  u = l2_normalize(jnp.concatenate([features_1, features_2]).astype(jnp.float32))
  n2 = u.shape[0]
  n = n2 // 2
  logits = jnp.einsum("id,jd->ij", u, u, precision=_HI) / temperature
  logits = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, logits)
  pos = jnp.concatenate([jnp.arange(n, n2), jnp.arange(n)])
  return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(n2), pos])


def quantization_penalty(codes: jax.Array) -> jax.Array:
  """``mean((|b| - 1)^2)``: pulls relaxed codes towards the corners of the cube."""
  codes = codes.astype(jnp.float32)
  return jnp.mean((jnp.abs(codes) - 1.0) ** 2)


def bit_balance_penalty(codes: jax.Array) -> jax.Array:
  """``mean_k (mean_i b_ik)^2`` for codes ``[n, d]``: 0 when every bit splits the
  batch in half, 1 when all codes are identical +-1 vectors (collapse)."""
  codes = codes.astype(jnp.float32)
  return jnp.mean(jnp.mean(codes, axis=0) ** 2)


def similarity_preservation(features: jax.Array, codes: jax.Array) -> jax.Array:
  """GreedyHash's and BiHalf's unsupervised loss: codes keep the features' cosines.

  The batch ``[n, .]`` is split into halves paired row by row (``i`` with ``i + h``,
  ``h = floor(n / 2)``; an odd last row is unused), as in both authors' code::

      L = mean_{i < h} (cos(b_i, b_{i+h}) - cos(x_i, x_{i+h}))^2

  ``features`` ``x [n, F]``, ``codes`` ``b [n, d]``.  0 for a batch of one (no pair).
  """
  h = codes.shape[0] // 2
  if h == 0:
    return jnp.zeros((), jnp.float32)

  def cos(a):
    a = l2_normalize(a.astype(jnp.float32))
    return jnp.sum(a[:h] * a[h:2 * h], axis=-1)
  return jnp.mean((cos(codes) - cos(features)) ** 2)


def cubic_penalty(h: jax.Array) -> jax.Array:
  """GreedyHash's ``mean(| |h| - 1 |^3)`` on the hash layer's pre-sign outputs ``h [n, d]``
  (its gradient at ``h = 0`` is 0, as in the authors' PyTorch)."""
  h = h.astype(jnp.float32)
  # sign(h) * h is |h| with torch.abs's derivative at 0 (0; jnp.abs's is 1).
  return jnp.mean(jnp.abs(jnp.sign(h) * h - 1.0) ** 3)


def bernoulli_kl(p: jax.Array, q: jax.Array, eps: float = 1e-8) -> jax.Array:
  """``mean_i sum_k KL(Bern(p_ik) || Bern(q_ik))`` for probabilities ``[n, d]``, with
  CIBHash's ``eps`` inside each log:
  ``p log((p + eps) / (q + eps)) + (1 - p) log((1 - p + eps) / (1 - q + eps))``."""
  p, q = p.astype(jnp.float32), q.astype(jnp.float32)
  # max(1 - p, 0): the same number, but XLA cannot re-associate (1 - p) + eps into
  # (1 + eps) - p, which is 1 - p in float32 -- log(0) at a saturated bit, NaN gradients.
  p_, q_ = jnp.maximum(1 - p, 0.0), jnp.maximum(1 - q, 0.0)
  kl = (p * (jnp.log(p + eps) - jnp.log(q + eps))
        + p_ * (jnp.log(p_ + eps) - jnp.log(q_ + eps)))
  return jnp.mean(jnp.sum(kl, axis=-1))


def label_similarity(labels_a: jax.Array, labels_b: jax.Array) -> jax.Array:
  """``S_ij = 1`` if items share at least one label, else 0.

  Labels are ``[n]`` ints or ``[n, C]`` multi-hot; returns ``[n_a, n_b]`` float32.
  """
  if labels_a.ndim == 1:
    return (labels_a[:, None] == labels_b[None, :]).astype(jnp.float32)
  shared = jnp.einsum("ic,jc->ij", labels_a.astype(jnp.float32),
                      labels_b.astype(jnp.float32), precision=_HI)
  return (shared > 0).astype(jnp.float32)


def dpsh_loss(codes: jax.Array, labels: jax.Array) -> jax.Array:
  """DPSH pairwise likelihood (Li et al. 2016) on relaxed codes ``u`` [n, d].

  ``theta_ij = <u_i, u_j> / 2``; ``L = mean_ij softplus(theta_ij) - S_ij theta_ij``.
  """
  u = codes.astype(jnp.float32)
  theta = 0.5 * jnp.einsum("id,jd->ij", u, u, precision=_HI)
  s = label_similarity(labels, labels)
  return jnp.mean(jax.nn.softplus(theta) - s * theta)


def hadamard_centers(num_classes: int, bits: int, seed: int = 0) -> jnp.ndarray:
  """CSQ hash centres: rows of a Hadamard matrix (and their negatives), else
  random +-1 (Yuan et al. 2020).  Returns ``[num_classes, bits]`` of +-1."""
  import numpy as np
  import scipy.linalg
  if bits & (bits - 1) == 0 and 2 * bits >= num_classes:
    h = scipy.linalg.hadamard(bits)
    centers = np.concatenate([h, -h])[:num_classes]
  else:
    rng = np.random.default_rng(seed)
    centers = np.where(rng.random((num_classes, bits)) < 0.5, -1.0, 1.0)
  return jnp.asarray(centers, jnp.float32)


def csq_loss(codes: jax.Array, labels: jax.Array, centers: jax.Array,
             quant_weight: float = 1e-4) -> jax.Array:
  """CSQ (central similarity quantization) on ``tanh`` codes ``u`` [n, d].

  The target of an item is its class centre (multi-label: the sign of the sum of
  its labels' centres); ``L = BCE((u+1)/2, (c+1)/2) + q * mean((|u|-1)^2)``.
  """
  u = codes.astype(jnp.float32)
  if labels.ndim == 1:
    target = centers[labels]
  else:
    target = binarize(labels.astype(jnp.float32) @ centers).astype(jnp.float32)
  p = jnp.clip((u + 1.0) / 2.0, 1e-6, 1 - 1e-6)
  t = (target + 1.0) / 2.0
  bce = -jnp.mean(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))
  return bce + quant_weight * quantization_penalty(u)


def dsh_loss(codes: jax.Array, labels: jax.Array, margin: Optional[float] = None,
             alpha: float = 0.01) -> jax.Array:
  """DSH contrastive margin loss (Liu et al. 2016) on real codes ``u`` [n, d].

  ``L = mean_ij [S_ij D_ij / 2 + (1 - S_ij) max(m - D_ij, 0) / 2]
  + alpha * mean(| |u| - 1 |)``, ``D_ij = ||u_i - u_j||^2``, margin ``m = 2d``.
  """
  u = codes.astype(jnp.float32)
  d = u.shape[-1]
  margin = 2.0 * d if margin is None else margin
  sq = jnp.sum(u * u, -1)
  dist = jnp.maximum(sq[:, None] + sq[None, :]
                     - 2 * jnp.einsum("id,jd->ij", u, u, precision=_HI), 0.0)
  s = label_similarity(labels, labels)
  pair = 0.5 * s * dist + 0.5 * (1 - s) * jnp.maximum(margin - dist, 0.0)
  return jnp.mean(pair) + alpha * jnp.mean(jnp.abs(jnp.abs(u) - 1.0))

