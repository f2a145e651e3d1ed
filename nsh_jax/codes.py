"""The one sign, its straight-through forms and the one L2 normalisation, shared by losses,
quantizers and retrieval.

Light on purpose (NumPy and ``jax.numpy`` only) so that the lowest layers can
import it without pulling in Numba or a training stack.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["binarize", "sign_ste", "bi_half", "l2_normalize"]


def _xp(x):
  return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def binarize(x, dtype=np.int8):
  """``sign(x)`` with ``0 -> +1`` (the project's one sign), as ``dtype``.

  NumPy in, NumPy out; JAX in, JAX out.
  """
  xp = _xp(x)
  return xp.where(x >= 0, 1, -1).astype(dtype)


def sign_ste(x: jax.Array) -> jax.Array:
  """Straight-through sign: forward :func:`binarize` (0 -> +1), backward identity."""
  return x + jax.lax.stop_gradient(binarize(x, x.dtype) - x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def bi_half(u: jax.Array, gamma: float = 6.0) -> jax.Array:
  """BiHalf's bi-half layer (Li & van Gemert, AAAI 2021) on a batch ``u [n, d]``.

  Forward, per bit (column): the ``floor(n / 2)`` largest entries -> +1, the rest -> -1,
  so every bit splits the batch in half (equal values: the earlier row ranks higher).
  Backward, as the authors' code: ``g + gamma * (u - B) / (n d)`` -- straight-through
  plus the gradient of ``gamma / (2 n d) * ||u - B||^2``.
  """
  return _bi_half_codes(u)


def _bi_half_codes(u):
  n = u.shape[0]
  order = jnp.argsort(-u, axis=0, stable=True)  # ties: lower row index first
  ranks = jnp.argsort(order, axis=0, stable=True)
  return jnp.where(ranks < n // 2, 1, -1).astype(u.dtype)


def _bi_half_fwd(u, gamma):
  b = _bi_half_codes(u)
  return b, (u, b)


def _bi_half_bwd(gamma, res, g):
  u, b = res
  return (g + gamma * (u - b) / u.size,)


bi_half.defvjp(_bi_half_fwd, _bi_half_bwd)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """``x / max(||x||_2, eps)`` along ``axis`` (NumPy or JAX, like :func:`binarize`).

  Computed as ``x / sqrt(max(sum x^2, eps^2))``: the same value, and a finite gradient at
  ``x = 0`` (a zero row, e.g. a head whose ReLUs are all off), where the gradient of
  ``||x||`` is 0/0.
  """
  xp = _xp(x)
  sq = xp.sum(x * x, axis=axis, keepdims=True)
  return x / xp.sqrt(xp.maximum(sq, xp.asarray(eps, x.dtype) ** 2))
