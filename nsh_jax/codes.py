"""The one sign and the one L2 normalisation, shared by losses, quantizers and retrieval.

Light on purpose (NumPy and ``jax.numpy`` only) so that the lowest layers can
import it without pulling in Numba or a training stack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["binarize", "sign_ste", "l2_normalize"]


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


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """``x / max(||x||_2, eps)`` along ``axis`` (NumPy or JAX, like :func:`binarize`)."""
  xp = _xp(x)
  return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)
