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

  An all-zero row (e.g. a frozen backbone whose features are all zero, as Lite2's are at
  32 px) stays zero with a finite gradient: ``||x||``'s gradient at 0 is 0/0, so such rows
  take the norm of ones instead (the same ops as before for every other row).
  """
  xp = _xp(x)
  zero = xp.all(x == 0, axis=axis, keepdims=True)
  norm = xp.linalg.norm(xp.where(zero, xp.ones_like(x), x), axis=axis, keepdims=True)
  return x / xp.where(zero, eps, xp.maximum(norm, eps))
