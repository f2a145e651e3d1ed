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
  by ``ott-jax``, the alternative sorter that can be compared against SoftSort
  (``ott.tools.soft_sort.sort_with`` is Sinkhorn-based too: ``O(n^2)`` per
  iteration, not SoftSort, so the exact fast path is written here).
* :func:`sort_gather` -- picks a sorter by name from ``SORTERS``.

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

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax.registry import Registry

__all__ = ["SORTERS", "hamming_similarity", "soft_sort", "soft_sort_apply",
           "ott_soft_permutation", "sort_gather"]

# name -> fn(scores [..., n], values [..., n], temperature) -> [..., n] by rank.
SORTERS = Registry("sorter", "loss.sorter")


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
  ``sort`` runs a scalar comparator (slower here, BENCHMARKS.md).
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

  _, h = jax.lax.associative_scan(combine, (jnp.broadcast_to(decay, values.shape), values),
                                  axis=-1)
  return h


def _kernel_scans(x: jax.Array, stacked: jax.Array, temperature):
  """Inclusive one-sided Laplace-kernel sums over a descending row.

  ``x`` ``[..., n]`` sorted descending; ``stacked`` ``[k, ..., n]`` values in
  that order.  Returns ``(link, left, right)``: ``link[p] = exp(-(x_p - x_{p+1})/tau)``
  ``[..., n-1]``, ``left[p] = sum_{q<=p} v_q k(x_q, x_p)`` and
  ``right[p] = sum_{q>=p} v_q k(x_q, x_p)``, each a first-order recurrence with
  factors in ``(0, 1]`` (stable in both directions).
  """
  link = jnp.exp(-(x[..., :-1] - x[..., 1:]) / temperature)
  zeros = jnp.zeros_like(x[..., :1])
  left = _scan(jnp.concatenate([zeros, link], -1), stacked)
  right = jnp.flip(_scan(jnp.flip(jnp.concatenate([link, zeros], -1), -1),
                         jnp.flip(stacked, -1)), -1)
  return link, left, right


def _pad_last(link: jax.Array) -> jax.Array:
  """``link`` ``[..., n-1]`` -> ``[..., n]`` with 0 at the end (``n = 1`` included)."""
  return jnp.concatenate([link, jnp.zeros(link.shape[:-1] + (1,), link.dtype)], -1)


def _full_sums(link, left, right):
  """``K[p] = sum_q v_q k(x_q, x_p)`` from the one-sided sums: ``left[p] + link[p] right[p+1]``."""
  right_next = jnp.concatenate([right[..., 1:], jnp.zeros_like(right[..., :1])], -1)
  return left + _pad_last(link) * right_next


def _tie_groups(x: jax.Array):
  """First and last position ``[..., n]`` int32 of each position's run of equal values."""
  n = x.shape[-1]
  iota = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), x.shape)
  new_run = jnp.concatenate([jnp.ones_like(x[..., :1], bool), x[..., 1:] != x[..., :-1]], -1)
  run_ends = jnp.concatenate([x[..., :-1] != x[..., 1:], jnp.ones_like(x[..., :1], bool)], -1)
  first = jax.lax.cummax(jnp.where(new_run, iota, 0), axis=x.ndim - 1)
  last = jax.lax.cummin(jnp.where(run_ends, iota, n - 1), axis=x.ndim - 1, reverse=True)
  return first, last


def _strict_sums(link, left, right, first, last):
  """Kernel sums over strictly larger (``above``) and strictly smaller (``below``) values.

  ``above[p] = link[f-1] left[f-1]`` with ``f`` the first position of p's tie
  run (0 when ``f = 0``), ``below[p] = link[l] right[l+1]`` with ``l`` its last.
  """
  n = link.shape[-1] + 1
  take = lambda a, i: jnp.take_along_axis(a, jnp.broadcast_to(i, a.shape[:1] + i.shape), -1)
  link_ext = _pad_last(link)
  up = jnp.maximum(first - 1, 0)
  above = jnp.where(first > 0, take(link_ext[None], up) * take(left, up), 0.0)
  down = jnp.minimum(last + 1, n - 1)
  below = jnp.where(last < n - 1, take(link_ext[None], last) * take(right, down), 0.0)
  return above, below


def _run_mean(values: jax.Array, first: jax.Array, last: jax.Array) -> jax.Array:
  """Mean of ``values`` over each position's tie run, broadcast to the run's members.

  A segmented scan each way (no prefix-sum differences, so no cancellation).
  """
  n = values.shape[-1]
  iota = jnp.arange(n, dtype=jnp.int32)

  def combine(left, right):
    f_l, a_l = left
    f_r, a_r = right
    return f_l | f_r, jnp.where(f_r, a_r, a_l + a_r)

  starts, ends = first == iota, last == iota
  _, down = jax.lax.associative_scan(combine, (starts, values), axis=-1)
  _, up = jax.lax.associative_scan(combine, (jnp.flip(ends, -1), jnp.flip(values, -1)), axis=-1)
  total = down + jnp.flip(up, -1) - values
  return total / (last - first + 1).astype(values.dtype)


@jax.custom_vjp
def _sorted_apply(x: jax.Array, v: jax.Array, temperature: jax.Array) -> jax.Array:
  """``out[p] = sum_q v_q k(x_p, x_q) / sum_q k(x_p, x_q)`` for a row ``x`` sorted
  descending, ``k(a, b) = exp(-|a - b| / tau)``; ``[..., n]`` -> ``[..., n]``."""
  return _sorted_apply_fwd(x, v, temperature)[0]


def _sorted_apply_fwd(x, v, temperature):
  link, left, right = _kernel_scans(x, jnp.stack([v, jnp.ones_like(v)]), temperature)
  sums = _full_sums(link, left, right)
  out = sums[0] / sums[1]  # the normaliser is >= 1: every point sees itself
  return out, (x, v, temperature, link, left, right, out, sums[1])


def _sorted_apply_bwd(residuals, g):
  # The symmetric subgradient (the tie contract of soft_sort_apply), in closed
  # form.  With w_r = g_r / K1_r, dL/dk(r, q) = w_r (v_q - out_r), and
  #   dk/dt_r = -sign(t_r - x_q) k / tau,   dk/dx_q = +sign(t_r - x_q) k / tau,
  # sign(0) = 0 (tied pairs contribute nothing).  Writing A_u / B_u for kernel
  # sums of u over strictly larger / smaller values:
  #   dL/dt_r  = -(w_r / tau) [(B_v - out_r B_1) - (A_v - out_r A_1)]   (query side)
  #   dL/dx_q  = (1 / tau) [v_q (A_w - B_w) - (A_wo - B_wo)]             (data side)
  #   dL/dv_q  = K_w(x_q)
  # t = sort(x) sends dL/dt_r to the members of r's tie run in equal shares.
  # tau: out depends on x / tau only, so dL/dtau = -(1/tau) sum_p x_p dL/dx_p.
  x, v, tau, link, left, right, out, norm = residuals
  first, last = _tie_groups(x)
  above, below = _strict_sums(link, left, right, first, last)
  w = g / norm
  _, left_w, right_w = _kernel_scans(x, jnp.stack([w, w * out]), tau)
  above_w, below_w = _strict_sums(link, left_w, right_w, first, last)
  d_t = -(w / tau) * ((below[0] - out * below[1]) - (above[0] - out * above[1]))
  d_x = (v * (above_w[0] - below_w[0]) - (above_w[1] - below_w[1])) / tau
  d_x = d_x + _run_mean(d_t, first, last)
  d_v = _full_sums(link, left_w, right_w)[0]
  # Rows are translation invariant (sum_p dL/dx_p = 0): centre x for accuracy.
  d_tau = -jnp.sum((x - x[..., :1]) * d_x) / tau
  return d_x, d_v, jnp.reshape(d_tau, jnp.shape(tau)).astype(jnp.result_type(tau))


_sorted_apply.defvjp(_sorted_apply_fwd, _sorted_apply_bwd)


def soft_sort_apply(scores: jax.Array, values: jax.Array,
                    temperature: float | jax.Array) -> jax.Array:
  """Applies each row's SoftSort matrix to a vector, exactly, without forming it.

  ``out[..., r] = sum_j P[..., r, j] * values[..., j]`` with ``P`` as in
  :func:`soft_sort`.  Cost ``O(n log n)`` time, ``O(n)`` memory per row, and
  gradients flow to ``scores``, ``values`` and ``temperature``.

  Tie contract: where scores tie exactly (e.g. Hamming similarities of +-1
  codes) the function is not differentiable; the gradient returned is the
  symmetric subgradient -- ``d|x|/dx = 0`` at 0, and the cotangent of a sorted
  value is shared equally by the members of its tie run -- so it does not
  depend on the order ties come out of the sort: permuting the candidates
  permutes the gradients the same way.

  Args:
    scores: ``[..., n]`` scores that define the (descending) order.
    values: ``[..., n]`` one value per candidate (e.g. a latent inner product).
    temperature: scalar ``tau > 0`` (may be traced).

  Returns:
    ``[..., n]`` float32, indexed by rank ``r``.
  """
  scores = jnp.asarray(scores, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim:
    raise ValueError(f"temperature must be a scalar; got shape {temperature.shape}")
  # The order itself carries no gradient; the sorted values and the values
  # gathered in that order do (take_along_axis's transpose scatters back).
  order = _argsort_desc(scores)
  x = jnp.take_along_axis(scores, order, axis=-1)
  v = jnp.take_along_axis(values, order, axis=-1)
  return _sorted_apply(x, v, temperature)


def ott_soft_permutation(scores: jax.Array, epsilon: float = 0.1,
                         max_iterations: int = 200) -> jax.Array:
  """Optimal-transport soft permutation of each row (descending), via ott-jax.

  Uses ``ott.tools.soft_sort.transport_for_sort`` -- entropic OT between the
  ``n`` scores (squashed to ``[0, 1]``, uniform weights) and ``n`` increasing
  targets -- and returns ``n * plan`` with the target axis reversed, so row
  ``r`` is a distribution over candidates for rank ``r`` (largest first; rows
  sum to 1).  Sinkhorn is unrolled (``implicit_diff=None``) from the default
  initializer: with implicit differentiation ott-jax 0.6 returns non-finite
  gradients here.  ``O(n^2)`` per iteration.

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


def _ott_gather(scores, values, temperature, epsilon: float = 0.1):
  del temperature  # the OT sorter's smoothing is its entropic epsilon
  perm = ott_soft_permutation(scores, epsilon=epsilon)
  return jnp.einsum("...rj,...j->...r", perm, jnp.asarray(values, jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


SORTERS.register("softsort")(soft_sort_apply)
SORTERS.register("ott")(_ott_gather)


def sort_gather(scores: jax.Array, values: jax.Array,
                temperature: float | jax.Array, sorter: str = "softsort") -> jax.Array:
  """``out[..., r] = sum_j P[..., r, j] values[..., j]`` for the sorter named ``sorter``.

  ``'softsort'`` uses the exact fast path (:func:`soft_sort_apply`); ``'ott'``
  forms the optimal-transport soft permutation (``O(n^2)`` memory per row).
  """
  return SORTERS.get(sorter)(scores, values, temperature)
