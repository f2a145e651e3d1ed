"""NHL: nested multi-length codes from one head (He et al., arXiv 2412.08922).

One projection ``u = f W + b`` (``W`` ``[F, b_K]``) emits codes of every length
in ``bit_list`` (ascending) as prefix slices ``u[:, :b_k]`` -- the 16-bit code is
the first 16 bits of the 32-bit code.  The head is :class:`HashEncoder`'s
``hash`` layer with ``bits = max(bit_list)``; this module holds the rest:

* :func:`prefixes` -- the per-length slices.
* :func:`cascade_distillation` -- long->short self-distillation:
  ``G = rownorm(U) rownorm(U)^T``; ``D_k = ||sg(G_{k+1}) - G_k||_F^2 / B^2``.
* :func:`dominance_weights` -- dominance-aware weights from the head-weight
  gradients ``g_k`` of each length's loss: for ``k < j`` with
  ``dot_kj = <g_k, g_j>`` on the shared block ``W[:, :b_k]`` and
  ``tau_k = beta ||g_k||^2 / (K - 1)`` (each length's **own** norm -- the
  released code used the shortest length's for all, a known bug):
  ``alpha_kj = tau_k / (-dot_kj)`` if ``-dot_kj > tau_k`` else 1, then
  ``alpha_kj <- min(alpha_kj, alpha_k,k+1)`` for ``j >= k+2``;
  ``w_1 = 1``, ``w_j = prod_{k<j} alpha_kj``, normalised to ``sum w = K``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from nsh_jax.codes import l2_normalize

__all__ = ["prefixes", "cascade_distillation", "dominance_weights"]


def prefixes(codes: jax.Array, bit_list: Sequence[int]) -> list:
  """``[codes[..., :b] for b in bit_list]``."""
  return [codes[..., :b] for b in bit_list]


def _gram(u: jax.Array) -> jax.Array:
  u = l2_normalize(u.astype(jnp.float32))
  return u @ u.T


def cascade_distillation(short: jax.Array, long: jax.Array) -> jax.Array:
  """``||sg(G_long) - G_short||_F^2 / B^2`` for continuous outputs ``[B, b_k]``, ``[B, b_{k+1}]``."""
  teacher = jax.lax.stop_gradient(_gram(long))
  b = short.shape[0]
  return jnp.sum((teacher - _gram(short)) ** 2) / (b * b)


def dominance_weights(head_grads: Sequence[jax.Array], bit_list: Sequence[int],
                      beta: float = 1.0) -> jax.Array:
  """Dominance-aware weights ``[K]`` (sum ``K``; all 1 when no gradients conflict).

  Args:
    head_grads: ``K`` gradients of the head kernel ``[F, b_K]``, one per length's
      loss (zero outside that length's columns).
    bit_list: ascending code lengths ``b_1 < ... < b_K``.
  """
  k_total = len(bit_list)
  if k_total == 1:
    return jnp.ones((1,), jnp.float32)
  g = [jnp.asarray(x, jnp.float32) for x in head_grads]
  alpha = [[jnp.float32(1.0)] * k_total for _ in range(k_total)]
  for k in range(k_total - 1):
    block = bit_list[k]
    gk = g[k][:, :block]
    tau = beta * jnp.sum(gk * gk) / (k_total - 1)
    for j in range(k + 1, k_total):
      dot = jnp.sum(gk * g[j][:, :block])
      a = jnp.where((dot < 0) & (-dot > tau), tau / jnp.maximum(-dot, 1e-30), 1.0)
      if j >= k + 2:
        a = jnp.minimum(a, alpha[k][k + 1])
      alpha[k][j] = a
  weights = [jnp.float32(1.0)]
  for j in range(1, k_total):
    w = jnp.float32(1.0)
    for k in range(j):
      w = w * alpha[k][j]
    weights.append(w)
  w = jnp.stack(weights)
  return jax.lax.stop_gradient(w * k_total / jnp.sum(w))
