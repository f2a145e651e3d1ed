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

from typing import Optional

import jax
import jax.numpy as jnp

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


def _linear_recurrence(decay: jax.Array, values: jax.Array) -> jax.Array:
  """``h_r = decay_r * h_{r-1} + values_r`` along the last axis (``h_{-1} = 0``).

  ``decay`` broadcasts against ``values``; ``decay[..., 0]`` is ignored.
  """
  decay = jnp.broadcast_to(decay, values.shape)

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r

  _, h = jax.lax.associative_scan(combine, (decay, values), axis=-1)
  return h


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
  # Stable descending order; ties keep candidate order.  Gradients reach the
  # scores through the gathered values, never through the integer order.
  order = jnp.argsort(-scores, axis=-1, stable=True)
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
