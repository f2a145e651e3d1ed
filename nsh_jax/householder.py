"""Post-hoc quantizers: H2Q (Householder), ITQ and LSH behind one interface.

Every quantizer is a dict ``{'name', 'mean' [k_in], 'projection' [k_in, bits]}``;
:func:`apply` returns ``(z - mean) @ projection`` and codes are its signs.

* **H2Q** (Schwengber et al., arXiv 2311.04207): an orthogonal ``U = H(v_1) ... H(v_k)``,
  ``H(v) = I - 2 v v^T / |v|^2``, learned so that ``z U^T`` sits near its sign.
  Train embeddings are rescaled to norm ``sqrt(k)``; SGD (lr 0.1, batch 128) on
  the L2 loss ``mean((z U^T - sign(z U^T))^2)`` (or L1, min-entry, bit-variance);
  ``v_i`` start at the identity columns (``U = -I``); the ``U`` with the lowest
  loss on a held-out 10% is kept.  The product is formed in compact WY form
  (the UT transform): ``U = I - V S^{-1} V^T`` with
  ``S = striu(V^T V) + diag(V^T V) / 2`` -- one triangular solve, not ``k``
  matrix products.
* **ITQ** (Gong & Lazebnik 2011): optional PCA to ``bits`` dimensions, then
  alternate ``B = sign(V R)`` and the orthogonal Procrustes step
  ``R = P Q^T`` from ``svd(V^T B) = P S Q^T``; ``||B - V R||_F`` never increases.
* **LSH**: random Gaussian projections of centred data.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nsh_jax.codes import binarize, l2_normalize
from nsh_jax.registry import Registry

__all__ = ["QUANTIZERS", "H2Q_LOSSES", "householder_product", "h2q_loss", "fit_h2q", "fit_itq",
           "fit_lsh", "fit_sign", "itq_objective", "fit", "apply"]

QUANTIZERS = Registry("quantizer", "quantizer")
H2Q_LOSSES = {
    "l2": lambda x: jnp.mean((x - binarize(x, x.dtype)) ** 2),
    "l1": lambda x: jnp.mean(jnp.abs(x - binarize(x, x.dtype))),
    "min_entry": lambda x: jnp.mean(jax.nn.logsumexp(-x ** 2, axis=-1)),
    "bit_var": lambda x: jnp.mean(jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))),
}


def householder_product(vectors: jax.Array) -> jax.Array:
  """``U = H(v_1) H(v_2) ... H(v_m)`` for the columns ``v_i`` of ``vectors`` [k, m].

  Compact WY form: ``U = I - V S^{-1} V^T``, ``S = striu(V^T V) + diag(V^T V)/2``.
  Returns ``[k, k]`` orthogonal (to float tolerance).
  """
  v = jnp.asarray(vectors, jnp.float32)
  k = v.shape[0]
  gram = v.T @ v
  s = jnp.triu(gram, 1) + 0.5 * jnp.diag(jnp.diag(gram))
  x = jax.scipy.linalg.solve_triangular(s, v.T, lower=False)
  return jnp.eye(k, dtype=v.dtype) - v @ x


def h2q_loss(rotated: jax.Array, kind: str = "l2") -> jax.Array:
  """Quantization loss of rotated embeddings ``x`` ``[n, k]`` (mean over entries).

  ``l2``: ``mean((x - sign x)^2)``; ``l1``: ``mean(|x - sign x|)``;
  ``min_entry``: ``mean_i logsumexp_k(-x_ik^2)``; ``bit_var``:
  ``mean(p (1 - p))``, ``p = sigmoid(x)``.
  """
  if kind not in H2Q_LOSSES:
    raise ValueError(f"unknown H2Q loss {kind!r}; expected one of {tuple(H2Q_LOSSES)}")
  return H2Q_LOSSES[kind](rotated)


def _rescale(z):
  return l2_normalize(z, axis=1) * np.sqrt(z.shape[1])


def _check_embeddings(z, name="embeddings"):
  z = np.asarray(z, np.float32)
  if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
    raise ValueError(f"{name} must be [n >= 2, dim >= 1]; got shape {z.shape}")
  if not np.all(np.isfinite(z)):
    raise ValueError(f"{name} contain NaN or inf")
  return z


def _pca(z, bits):
  """``(mean, [d, bits])``: the top ``bits`` principal directions, largest first."""
  mean = z.mean(0)
  if bits >= z.shape[1]:
    return mean, np.eye(z.shape[1], dtype=np.float32)
  # Fewer rows than bits: the thin SVD has only n directions; the full one completes them
  # with orthonormal directions of zero variance.
  _, _, vt = np.linalg.svd(z - mean, full_matrices=bits > z.shape[0])
  return mean, vt[:bits].T.astype(np.float32)


def fit_h2q(z, *, loss: str = "l2", epochs: int = 100, batch_size: int = 128,
            learning_rate: float = 0.1, val_fraction: float = 0.1, seed: int = 0) -> dict:
  """Learns H2Q's rotation on embeddings ``[n, k]``; returns a quantizer dict.

  Returns also ``history`` (held-out loss per epoch) and ``val_loss``.
  """
  z = _check_embeddings(z)
  n, k = z.shape
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n)
  n_val = max(1, int(round(n * val_fraction))) if n >= 10 else 0
  val, train = _rescale(z[perm[:n_val]]), _rescale(z[perm[n_val:]])
  if n_val == 0:
    val = train
  bs = min(batch_size, train.shape[0])
  steps = train.shape[0] // bs
  opt = optax.sgd(learning_rate)
  loss_of = lambda v, x: h2q_loss(x @ householder_product(v).T, loss)

  @jax.jit
  def epoch(v, opt_state, key, train_j, val_j):
    order = jax.random.permutation(key, train_j.shape[0])[:steps * bs].reshape(steps, bs)

    def step(carry, idx):
      v, s = carry
      g = jax.grad(loss_of)(v, train_j[idx])
      upd, s = opt.update(g, s, v)
      return (optax.apply_updates(v, upd), s), None

    (v, opt_state), _ = jax.lax.scan(step, (v, opt_state), order)
    return v, opt_state, loss_of(v, val_j)

  v = jnp.eye(k, dtype=jnp.float32)
  state = opt.init(v)
  train_j, val_j = jnp.asarray(train), jnp.asarray(val)
  best_v, best = v, float(loss_of(v, val_j))
  history = [best]
  key = jax.random.PRNGKey(seed)
  for e in range(epochs):
    v, state, val_loss = epoch(v, state, jax.random.fold_in(key, e), train_j, val_j)
    val_loss = float(val_loss)
    history.append(val_loss)
    if val_loss < best:
      best, best_v = val_loss, v
  u = np.asarray(householder_product(best_v))
  return {"name": "h2q", "mean": np.zeros(k, np.float32), "projection": u.T.astype(np.float32),
          "val_loss": best, "history": history}


def itq_objective(v: np.ndarray, r: np.ndarray) -> float:
  """``||sign(V R) - V R||_F^2`` (what ITQ minimises)."""
  x = v @ r
  return float(np.sum((binarize(x, x.dtype) - x) ** 2))


def fit_itq(z, bits: Optional[int] = None, iterations: int = 50, seed: int = 0,
            return_objectives: bool = False) -> dict:
  """ITQ: PCA to ``bits`` dims (if fewer than the input's), then alternating
  sign / orthogonal-Procrustes rotation, from a random orthogonal start."""
  z = _check_embeddings(z)
  bits = z.shape[1] if bits is None else int(bits)
  if not 1 <= bits <= z.shape[1]:
    raise ValueError(f"ITQ bits must be in [1, {z.shape[1]}] for {z.shape[1]}-d input; got {bits}")
  mean, pca = _pca(z, bits)
  v = (z - mean) @ pca
  rng = np.random.default_rng(seed)
  r, _ = np.linalg.qr(rng.normal(size=(bits, bits)))
  objectives = [itq_objective(v, r)]
  for _ in range(iterations):
    b = binarize(v @ r, np.float64)
    p, _, qt = np.linalg.svd(v.T @ b)
    r = p @ qt
    objectives.append(itq_objective(v, r))
  out = {"name": "itq", "mean": mean.astype(np.float32),
         "projection": (pca @ r).astype(np.float32)}
  if return_objectives:
    out["objectives"] = objectives
  return out


def fit_lsh(z, bits: Optional[int] = None, seed: int = 0) -> dict:
  """LSH: sign of random Gaussian projections of the centred data."""
  z = _check_embeddings(z)
  bits = z.shape[1] if bits is None else int(bits)
  if bits < 1:
    raise ValueError(f"LSH bits must be >= 1; got {bits}")
  rng = np.random.default_rng(seed)
  return {"name": "lsh", "mean": z.mean(0).astype(np.float32),
          "projection": rng.normal(size=(z.shape[1], bits)).astype(np.float32)}


def fit_sign(z, bits: Optional[int] = None, seed: int = 0) -> dict:
  """The identity quantizer: the codes are the signs of the first ``bits`` dimensions."""
  del seed
  k = z.shape[1] if bits is None else bits
  return {"name": "sign", "mean": np.zeros(z.shape[1], np.float32),
          "projection": np.eye(z.shape[1], k, dtype=np.float32)}


def fit_h2q_to(z, bits: Optional[int] = None, seed: int = 0, **kwargs) -> dict:
  """H2Q with ``bits`` outputs: PCA to ``bits`` dimensions first when that is fewer."""
  if bits is not None and bits < z.shape[1]:
    mean, pca = _pca(z, bits)
    q = fit_h2q((z - mean) @ pca, seed=seed, **kwargs)
    return {**q, "mean": mean, "projection": pca @ q["projection"]}
  return fit_h2q(z, seed=seed, **kwargs)


QUANTIZERS.register("sign")(fit_sign)
QUANTIZERS.register("h2q")(fit_h2q_to)
QUANTIZERS.register("itq")(fit_itq)
QUANTIZERS.register("lsh")(fit_lsh)


def fit(name: str, z, bits: Optional[int] = None, seed: int = 0, **kwargs) -> dict:
  """Fits quantizer ``name`` (one of ``QUANTIZERS``) on ``z`` ``[n, k]``."""
  fit_fn = QUANTIZERS.get(name)
  return fit_fn(_check_embeddings(z), bits, seed=seed, **kwargs)


def apply(quantizer: dict, z) -> np.ndarray:
  """``(z - mean) @ projection`` ``[n, bits]``; the codes are its signs."""
  z = np.asarray(z, np.float32)
  mean, proj = quantizer["mean"], quantizer["projection"]
  if z.ndim != 2 or z.shape[1] != proj.shape[0]:
    raise ValueError(f"embeddings must be [n, {proj.shape[0]}] for this {quantizer['name']} "
                     f"quantizer; got shape {z.shape}")
  return (z - mean) @ proj
