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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nsh_jax.registry import Registry

__all__ = ["SORTERS", "hamming_similarity", "soft_sort", "soft_sort_apply", "argsort_desc",
           "sorted_apply_fwd", "sorted_apply_bwd", "ott_soft_permutation", "sort_gather"]

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


@functools.partial(jax.jit, static_argnames="axis")  # one compiled network per shape
def _bitonic_argsort_desc(keys: jax.Array, axis: int = -1) -> jax.Array:
  """Indices that sort ``axis`` descending, by a bitonic sorting network.

  ``log2(N) (log2(N) + 1) / 2`` compare-exchange stages (``N`` = the axis length
  rounded up to a power of two, padded with ``-inf``), each one fused elementwise
  pass -- data-parallel work that XLA:CPU vectorises, where its ``sort`` runs a
  scalar comparator (slower here, BENCHMARKS.md).  The sorted axis is moved first,
  so that every compare-exchange swaps whole contiguous vectors (the other axes).
  Ties come out in an unspecified order, which :func:`soft_sort_apply` does not
  depend on.  ``O(n log^2 n)`` per row.
  """
  keys = jax.lax.stop_gradient(jnp.asarray(keys, jnp.float32))
  keys = jnp.moveaxis(keys, axis, 0)
  n, rest = keys.shape[0], keys.shape[1:]
  size = 1 << max(n - 1, 0).bit_length()
  keys = keys.reshape(n, -1)
  if size != n:
    keys = jnp.concatenate([keys, jnp.full((size - n, keys.shape[1]), -jnp.inf, keys.dtype)])
  idx = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32)[:, None], keys.shape)
  block = 2
  while block <= size:  # merge bitonic runs of length `block`
    stride = block // 2
    while stride >= 1:  # compare i with i + stride inside each pair of halves
      shape = (size // (2 * stride), 2, stride, keys.shape[1])
      k2, i2 = keys.reshape(shape), idx.reshape(shape)
      first = np.arange(size // (2 * stride)) * 2 * stride
      descending = jnp.asarray(((first & block) == 0)[:, None, None])
      lo, hi = k2[:, 0], k2[:, 1]
      swap = jnp.where(descending, lo < hi, lo > hi)
      keys = jnp.stack([jnp.where(swap, hi, lo), jnp.where(swap, lo, hi)], 1).reshape(keys.shape)
      idx = jnp.stack([jnp.where(swap, i2[:, 1], i2[:, 0]),
                       jnp.where(swap, i2[:, 0], i2[:, 1])], 1).reshape(idx.shape)
      stride //= 2
    block *= 2
  return jnp.moveaxis(idx[:n].reshape((n,) + rest), 0, axis)


# Largest row length that takes the sorting network on CPU: measured faster
# than XLA's sort at every n up to here (benchmarks/sorted_nce.py); beyond it
# the comparison sort's O(n log n) keeps the loss O(n^2 log n) asymptotically.
_NETWORK_MAX_N = 4096


def argsort_desc(scores: jax.Array, axis: int = -1) -> jax.Array:
  """Descending order along ``axis``: the sorting network on CPU for ``n <= 4096``,
  XLA's sort otherwise (TPU/GPU sorts are already data-parallel)."""
  if jax.default_backend() == "cpu" and scores.shape[axis] <= _NETWORK_MAX_N:
    return _bitonic_argsort_desc(scores, axis=axis)
  return jnp.argsort(-scores, axis=axis)


# The kernels below work on the rank axis first: ``x`` ``[n, ...]`` sorted descending
# along axis 0, values alike; every shift, scan and gather moves whole contiguous
# vectors of the trailing axes (the rows), which XLA:CPU vectorises.

def _shift_up(a: jax.Array) -> jax.Array:
  """``a[1:]`` with a zero row appended: ``out[p] = a[p + 1]`` (0 past the end)."""
  return jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])


def _scan(decay: jax.Array, values: tuple) -> tuple:
  """``h_r = decay_r * h_{r-1} + values_r`` along axis 0, for each array of ``values``."""

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, tuple(a_r * l + r for l, r in zip(b_l, b_r))

  _, h = jax.lax.associative_scan(combine, (decay, tuple(values)), axis=0)
  return h


def _kernel_scans(x: jax.Array, values: tuple, temperature):
  """Inclusive one-sided Laplace-kernel sums over a descending ``x`` ``[n, ...]``.

  Returns ``(link, left, right)``: ``link[p] = exp(-(x_p - x_{p+1})/tau)`` ``[n-1, ...]``,
  and for each ``v`` of ``values`` ``left[p] = sum_{q<=p} v_q k(x_q, x_p)``,
  ``right[p] = sum_{q>=p} v_q k(x_q, x_p)``: first-order recurrences with factors in
  ``(0, 1]`` (stable in both directions).
  """
  link = jnp.exp(-(x[:-1] - x[1:]) / temperature)
  zeros = jnp.zeros_like(x[:1])
  left = _scan(jnp.concatenate([zeros, link]), values)
  flip = lambda a: jnp.flip(a, 0)
  right = tuple(map(flip, _scan(flip(jnp.concatenate([link, zeros])), tuple(map(flip, values)))))
  return link, left, right


def _pad_last(link: jax.Array) -> jax.Array:
  """``link`` ``[n-1, ...]`` -> ``[n, ...]`` with 0 at the end (``n = 1`` included)."""
  return jnp.concatenate([link, jnp.zeros((1,) + link.shape[1:], link.dtype)])


def _full_sums(link, left, right) -> tuple:
  """``K[p] = sum_q v_q k(x_q, x_p)`` from the one-sided sums: ``left[p] + link[p] right[p+1]``."""
  link = _pad_last(link)
  return tuple(l + link * _shift_up(r) for l, r in zip(left, right))


def _tie_groups(x: jax.Array):
  """First and last position ``[n, ...]`` int32 of each position's run of equal values."""
  n = x.shape[0]
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
  differs = x[1:] != x[:-1]
  one = jnp.ones_like(x[:1], bool)
  # Associative scans: XLA:CPU's cummax/cummin are several times slower here.
  first = jax.lax.associative_scan(
      jnp.maximum, jnp.where(jnp.concatenate([one, differs]), iota, 0), axis=0)
  last = jax.lax.associative_scan(
      jnp.minimum, jnp.where(jnp.concatenate([differs, one]), iota, n - 1), axis=0, reverse=True)
  return first, last


def _strict_sums(link, left, right, first, last):
  """Kernel sums over strictly larger (``above``) and strictly smaller (``below``) values.

  ``above[p] = link[f-1] left[f-1]`` with ``f`` the first position of p's tie
  run (0 when ``f = 0``), ``below[p] = link[l] right[l+1]`` with ``l`` its last.
  """
  n = first.shape[0]
  take = lambda a, i: jnp.take_along_axis(a, i, axis=0)
  link = _pad_last(link)
  up, down = jnp.maximum(first - 1, 0), jnp.minimum(last + 1, n - 1)
  link_up, link_last = take(link, up), take(link, last)
  above = tuple(jnp.where(first > 0, link_up * take(a, up), 0.0) for a in left)
  below = tuple(jnp.where(last < n - 1, link_last * take(b, down), 0.0) for b in right)
  return above, below


def _run_mean(values: jax.Array, first: jax.Array, last: jax.Array) -> jax.Array:
  """Mean of ``values`` ``[n, ...]`` over each position's tie run along axis 0,
  broadcast to the run's members.

  One scatter-add of each run into its first position, then a gather: direct sums (no
  prefix-sum differences, so no cancellation), and no scan over values computed in the
  same fusion (which XLA:CPU ran several times slower).
  """
  n = values.shape[0]
  flat, start = values.reshape(n, -1), first.reshape(n, -1)
  column = jax.lax.broadcasted_iota(jnp.int32, flat.shape, 1)
  sums = jnp.zeros_like(flat).at[start, column].add(flat)
  count = (last - first + 1).reshape(n, -1).astype(values.dtype)
  return (jnp.take_along_axis(sums, start, axis=0) / count).reshape(values.shape)


@jax.custom_vjp
def _sorted_apply(x: jax.Array, v: jax.Array, temperature: jax.Array) -> jax.Array:
  """``out[p] = sum_q v_q k(x_p, x_q) / sum_q k(x_p, x_q)`` for ``x`` ``[n, ...]`` sorted
  descending along axis 0, ``k(a, b) = exp(-|a - b| / tau)``; ``[n, ...]`` -> ``[n, ...]``."""
  return sorted_apply_fwd(x, v, temperature)[0]


def sorted_apply_fwd(x, v, temperature):
  """The forward of the sorted kernel apply on ``x`` ``[n, ...]`` sorted descending along
  axis 0: ``(out, residuals)`` with ``out[p] = sum_q v_q k(x_p, x_q) / sum_q k(x_p, x_q)``
  (what :func:`soft_sort_apply` computes after sorting; the fused SortedNCE calls it per
  chunk of anchors)."""
  link, left, right = _kernel_scans(x, (v, jnp.ones_like(v)), temperature)
  sum_v, norm = _full_sums(link, left, right)
  out = sum_v / norm  # the normaliser is >= 1: every point sees itself
  return out, (x, v, temperature, link, left, right, out, norm)


def sorted_apply_bwd(residuals, g):
  """``(d_x, d_v, d_tau)`` from :func:`sorted_apply_fwd`'s residuals and the cotangent
  ``g`` of ``out``: the tie contract of :func:`soft_sort_apply`, in closed form."""
  # With w_r = g_r / K1_r, dL/dk(r, q) = w_r (v_q - out_r), and
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
  (above_v, above_1), (below_v, below_1) = _strict_sums(link, left, right, first, last)
  w = g / norm
  _, left_w, right_w = _kernel_scans(x, (w, w * out), tau)
  (above_w, above_wo), (below_w, below_wo) = _strict_sums(link, left_w, right_w, first, last)
  d_t = -(w / tau) * ((below_v - out * below_1) - (above_v - out * above_1))
  d_x = (v * (above_w - below_w) - (above_wo - below_wo)) / tau + _run_mean(d_t, first, last)
  d_v = _full_sums(link, left_w[:1], right_w[:1])[0]
  # Rows are translation invariant (sum_p dL/dx_p = 0): centre x for accuracy.
  d_tau = -jnp.sum((x - x[:1]) * d_x) / tau
  return d_x, d_v, jnp.reshape(d_tau, jnp.shape(tau)).astype(jnp.result_type(tau))


_sorted_apply.defvjp(sorted_apply_fwd, sorted_apply_bwd)


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
  # The kernels take the rank axis first.  The order itself carries no gradient;
  # the sorted values and the values gathered in that order do.
  scores, values = jnp.moveaxis(scores, -1, 0), jnp.moveaxis(values, -1, 0)
  order = argsort_desc(scores, axis=0)
  x = jnp.take_along_axis(scores, order, axis=0)
  v = jnp.take_along_axis(values, order, axis=0)
  return jnp.moveaxis(_sorted_apply(x, v, temperature), 0, -1)


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


def _ott_gather(scores, values, temperature):
  # The sort temperature is the OT sorter's smoothing: its entropic epsilon, on the
  # squashed [0, 1] scale ott-jax sorts on.
  perm = ott_soft_permutation(scores, epsilon=temperature)
  return jnp.einsum("...rj,...j->...r", perm, jnp.asarray(values, jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


SORTERS.register("softsort")(soft_sort_apply)
SORTERS.register("ott")(_ott_gather)


def sort_gather(scores: jax.Array, values: jax.Array,
                temperature: float | jax.Array, sorter: str = "softsort") -> jax.Array:
  """``out[..., r] = sum_j P[..., r, j] values[..., j]`` for the sorter named ``sorter``.

  ``'softsort'`` uses the exact fast path (:func:`soft_sort_apply`); ``'ott'``
  forms the optimal-transport soft permutation (``O(n^2)`` memory per row) with
  ``temperature`` as its entropic epsilon.
  """
  return SORTERS.get(sorter)(scores, values, temperature)
