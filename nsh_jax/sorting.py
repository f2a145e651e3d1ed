"""Hamming similarity of relaxed codes and differentiable sorting over it.

NSH ranks every candidate j for an anchor i by the Hamming similarity of their
codes and gathers the candidates' latents in that (soft) order.  This module
holds the pieces of that step:

* :func:`hamming_similarity` -- ``s = a b^T / (2d) + 1/2`` (``= 1 - Hamming/d``
  for +-1 codes).
* :func:`soft_sort` -- the SoftSort matrix of Prillo & Eisenschlos (ICML 2020),
  descending: ``P[r, j] = softmax_j(-|sort_desc(s)_r - s_j| / tau)``.
* :func:`soft_sort_apply` -- ``P @ v`` for every row **without forming P**:
  exact, ``O(n log n)`` time and ``O(n)`` memory per row.
* :func:`ott_soft_permutation` -- an optimal-transport soft permutation backed
  by ``ott-jax``, the alternative sorter that can be compared against SoftSort.
* :func:`sort_gather` -- picks a sorter by name.

Why the fast path is exact: ``P[r, j] = k(t_r, s_j) / sum_j k(t_r, s_j)`` with
the Laplace kernel ``k(x, y) = exp(-|x - y| / tau)`` and ``t = sort_desc(s)``.
Because the query points ``t`` are the data points themselves, after sorting
the row once the kernel sums ``K_v(t_r) = sum_j v_j k(t_r, s_j)`` split into a
left part (``s_j >= t_r``) and a right part (``s_j < t_r``), each a first-order
linear recurrence ``h_r = a_r h_{r-1} + v_r`` with ``a_r = exp(-gap_r / tau)``
in ``(0, 1]`` -- numerically stable, and evaluated by a parallel associative
scan.  The largest exponent of every softmax row is exactly 0 (the point
itself), so no max-subtraction is needed and ``K_1 >= 1``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

SORTERS = ("softsort", "ott")


def hamming_similarity(codes_a: jax.Array, codes_b: jax.Array) -> jax.Array:
  """Relaxed Hamming similarity between two sets of codes.

  ``s_ij = <a_i, b_j> / (2d) + 1/2``; for +-1 codes this is ``1 - H(a_i, b_j)/d``.

  Args:
    codes_a: ``[..., n, d]`` codes in ``[-1, 1]``.
    codes_b: ``[..., k, d]`` codes in ``[-1, 1]``.

  Returns:
    ``[..., n, k]`` float32 similarities in ``[0, 1]``.
  """
  codes_a = jnp.asarray(codes_a, jnp.float32)
  codes_b = jnp.asarray(codes_b, jnp.float32)
  d = codes_a.shape[-1]
  dots = jnp.einsum("...id,...jd->...ij", codes_a, codes_b,
                    precision=jax.lax.Precision.HIGHEST)
  return dots / (2.0 * d) + 0.5


def soft_sort(scores: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """The dense SoftSort matrix of each row, sorted descending.

  ``P[..., r, j] = softmax_j(-|sort_desc(s)_r - s_j| / tau)``.  Rows sum to 1;
  as ``tau -> 0`` it becomes the hard permutation matrix of ``argsort(-s)``.

  Args:
    scores: ``[..., n]`` scores to sort.
    temperature: ``tau > 0``, in the units of ``scores``.

  Returns:
    ``[..., n, n]`` row-stochastic soft permutation (``O(n^2)`` memory per row:
    for the matrix itself; use :func:`soft_sort_apply` to apply it).
  """
  scores = jnp.asarray(scores, jnp.float32)
  t = -jnp.sort(-scores, axis=-1)
  logits = -jnp.abs(t[..., :, None] - scores[..., None, :]) / temperature
  return jax.nn.softmax(logits, axis=-1)


@jax.jit  # one compiled network per shape, also when called eagerly
def _bitonic_argsort_desc(keys: jax.Array) -> jax.Array:
  """Indices that sort the last axis descending, by a bitonic sorting network.

  ``log2(N) (log2(N) + 1) / 2`` compare-exchange stages (``N`` = ``n`` rounded
  up to a power of two, padded with ``-inf``), each one fused elementwise pass
  over ``[..., N]`` -- data-parallel work that XLA:CPU vectorises, where its
  ``sort`` runs a scalar comparator (measured ~2-3x slower at ``n = 512``).
  Ties come out in an unspecified order, which :func:`soft_sort_apply` does
  not depend on.  ``O(n log^2 n)`` per row.
  """
  keys = jax.lax.stop_gradient(jnp.asarray(keys, jnp.float32))
  n = keys.shape[-1]
  size = 1 << max(n - 1, 0).bit_length()
  lead = keys.shape[:-1]
  if size != n:
    keys = jnp.concatenate([keys, jnp.full(lead + (size - n,), -jnp.inf, keys.dtype)], -1)
  idx = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), keys.shape)
  block = 2
  while block <= size:  # merge bitonic runs of length `block`
    stride = block // 2
    while stride >= 1:  # compare i with i + stride inside each pair of halves
      shape = lead + (size // (2 * stride), 2, stride)
      k2, i2 = keys.reshape(shape), idx.reshape(shape)
      first = np.arange(size // (2 * stride)) * 2 * stride
      descending = jnp.asarray(((first & block) == 0)[:, None])
      lo, hi = k2[..., 0, :], k2[..., 1, :]
      swap = jnp.where(descending, lo < hi, lo > hi)
      keys = jnp.stack([jnp.where(swap, hi, lo), jnp.where(swap, lo, hi)], -2).reshape(keys.shape)
      idx = jnp.stack([jnp.where(swap, i2[..., 1, :], i2[..., 0, :]),
                       jnp.where(swap, i2[..., 0, :], i2[..., 1, :])], -2).reshape(idx.shape)
      stride //= 2
    block *= 2
  return idx[..., :n]


# Largest row length that takes the sorting network on CPU: measured faster
# than XLA's sort at every n up to here (benchmarks/sorted_nce.py); beyond it
# the comparison sort's O(n log n) keeps the loss O(n^2 log n) asymptotically.
_NETWORK_MAX_N = 4096


def _argsort_desc(scores: jax.Array) -> jax.Array:
  """Descending order of the last axis: the sorting network on CPU for
  ``n <= 4096``, XLA's sort otherwise (TPU/GPU sorts are already data-parallel)."""
  if jax.default_backend() == "cpu" and scores.shape[-1] <= _NETWORK_MAX_N:
    return _bitonic_argsort_desc(scores)
  return jnp.argsort(-scores, axis=-1)


def _scan(decay: jax.Array, values: jax.Array) -> jax.Array:
  """``h_r = decay_r * h_{r-1} + values_r`` on the last axis, as a parallel scan."""

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r

  _, h = jax.lax.associative_scan(combine, (decay, values), axis=-1)
  return h


@jax.custom_vjp
def _linear_recurrence(decay: jax.Array, values: jax.Array) -> jax.Array:
  """``h[k, ..., r] = decay[..., r] * h[k, ..., r-1] + values[k, ..., r]`` (``h_{-1} = 0``).

  Runs along the last axis for each of the ``k`` leading rows of ``values``
  ``[k, ..., n]``, which share ``decay`` ``[..., n]``; ``decay[..., 0]`` is
  ignored.  With every ``decay`` in ``[0, 1]`` both this and its adjoint are
  stable.
  """
  if values.ndim != decay.ndim + 1 or values.shape[1:] != decay.shape:
    raise ValueError(f"values must be [k, *decay.shape]; got values {values.shape}, "
                     f"decay {decay.shape}")
  return _scan(jnp.broadcast_to(decay, values.shape), values)


def _linear_recurrence_fwd(decay, values):
  h = _linear_recurrence(decay, values)
  return h, (decay, h)


def _linear_recurrence_bwd(residuals, g):
  # The adjoint of a first-order recurrence is the same recurrence run
  # backwards: lam_r = g_r + decay_{r+1} lam_{r+1}; then dL/dvalues_r = lam_r
  # and dL/ddecay_r = lam_r h_{r-1}.  One reverse scan, against the ~10x cost
  # of differentiating through associative_scan's tree.
  decay, h = residuals
  zeros = jnp.zeros_like(decay[..., :1])
  decay_next = jnp.broadcast_to(jnp.concatenate([decay[..., 1:], zeros], -1), g.shape)
  lam = jnp.flip(_scan(jnp.flip(decay_next, -1), jnp.flip(g, -1)), -1)
  h_prev = jnp.concatenate([jnp.zeros_like(h[..., :1]), h[..., :-1]], -1)
  # ``decay`` is shared by the k leading rows: sum their terms with explicit
  # adds (XLA:CPU lowers a reduce over that short leading axis to a library
  # call ~30x slower than this elementwise fusion).
  g_decay = functools.reduce(jnp.add, [lam[k] * h_prev[k] for k in range(g.shape[0])])
  return g_decay, lam


_linear_recurrence.defvjp(_linear_recurrence_fwd, _linear_recurrence_bwd)


def soft_sort_apply(scores: jax.Array, values: jax.Array,
                    temperature: float | jax.Array) -> jax.Array:
  """Applies each row's SoftSort matrix to a vector, exactly, without forming it.

  ``out[..., r] = sum_j P[..., r, j] * values[..., j]`` with ``P`` as in
  :func:`soft_sort`.  Cost ``O(n log n)`` time, ``O(n)`` memory per row, and
  gradients flow to both ``scores`` and ``values``.

  Args:
    scores: ``[..., n]`` scores that define the (descending) order.
    values: ``[..., n]`` one value per candidate (e.g. a latent inner product).
    temperature: ``tau > 0`` (scalar, may be traced).

  Returns:
    ``[..., n]`` float32, indexed by rank ``r``.
  """
  scores = jnp.asarray(scores, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  # Descending order.  Tied scores may come out in any order: the output at
  # rank r depends only on the sorted value t_r, and a zero gap links tied
  # points with factor 1, so every tie order sums the same terms.  Gradients
  # reach the scores through the gathered values, never through the order.
  order = _argsort_desc(scores)
  x = jnp.take_along_axis(scores, order, axis=-1)
  v = jnp.take_along_axis(values, order, axis=-1)
  gaps = x[..., :-1] - x[..., 1:]  # >= 0 by construction
  link = jnp.exp(-gaps / temperature)  # link[r] couples ranks r and r + 1
  zeros = jnp.zeros_like(link[..., :1])
  # One scan for the numerator (v) and the normaliser (1) together.
  stacked = jnp.stack([v, jnp.ones_like(v)])
  # Left sums, inclusive: L_r = link_{r-1} L_{r-1} + v_r (points at or above t_r).
  left = _linear_recurrence(jnp.concatenate([zeros, link], -1), stacked)
  # Right sums, inclusive, by scanning the reversed row: R_r = link_r R_{r+1} + v_r.
  right = jnp.flip(
      _linear_recurrence(jnp.flip(jnp.concatenate([link, zeros], -1), -1),
                         jnp.flip(stacked, -1)), -1)
  # K_r = L_r + link_r * R_{r+1}: every point exactly once, no cancellation.
  right_next = jnp.concatenate([right[..., 1:], jnp.zeros_like(right[..., :1])], -1)
  kernel_sums = left + jnp.concatenate([link, zeros], -1) * right_next
  return kernel_sums[0] / kernel_sums[1]


def ott_soft_permutation(scores: jax.Array, epsilon: float = 0.1,
                         max_iterations: int = 200) -> jax.Array:
  """Optimal-transport soft permutation of each row (descending), via ott-jax.

  Uses ``ott.tools.soft_sort.transport_for_sort`` -- entropic OT between the
  ``n`` scores (squashed to ``[0, 1]``, uniform weights) and ``n`` increasing
  targets -- and returns ``n * plan`` with the target axis reversed, so row
  ``r`` is a distribution over candidates for rank ``r`` (largest first; rows
  sum to 1).  Sinkhorn is unrolled (``implicit_diff=None``) from the default
  initializer: with implicit differentiation ott-jax 0.6 returns non-finite
  gradients here (``shared/research/ecosystem.md``).  ``O(n^2)`` per iteration.

  Args:
    scores: ``[..., n]``.
    epsilon: entropic regularisation (on the squashed scale).
    max_iterations: Sinkhorn iteration cap.

  Returns:
    ``[..., n, n]`` with ``P[..., r, j]`` the mass of candidate ``j`` at rank ``r``.
  """
  from ott.initializers.linear import initializers  # lazy: optional path
  from ott.tools import soft_sort as ott_soft_sort

  scores = jnp.asarray(scores, jnp.float32)
  n = scores.shape[-1]
  uniform = jnp.full((n,), 1.0 / n)

  def one_row(row):
    out = ott_soft_sort.transport_for_sort(
        row, uniform, uniform, epsilon=epsilon,
        initializer=initializers.DefaultInitializer(), implicit_diff=None,
        max_iterations=max_iterations)
    plan = out.matrix  # [n candidates, n targets], targets increasing
    return n * jnp.flip(plan, axis=1).T

  flat = scores.reshape((-1, n))
  return jax.vmap(one_row)(flat).reshape(scores.shape + (n,))


def sort_gather(scores: jax.Array, values: jax.Array,
                temperature: float | jax.Array, sorter: str = "softsort",
                ott_epsilon: float = 0.1) -> jax.Array:
  """``out[..., r] = sum_j P[..., r, j] values[..., j]`` for the chosen sorter.

  ``'softsort'`` uses the exact fast path (:func:`soft_sort_apply`); ``'ott'``
  forms the optimal-transport soft permutation (``O(n^2)`` memory per row).
  """
  if sorter == "softsort":
    return soft_sort_apply(scores, values, temperature)
  if sorter == "ott":
    perm = ott_soft_permutation(scores, epsilon=ott_epsilon)
    return jnp.einsum("...rj,...j->...r", perm, jnp.asarray(values, jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  raise ValueError(f"unknown sorter {sorter!r}; expected one of {SORTERS}")
