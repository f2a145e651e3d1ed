"""Why SortedNCE helps or not: what its soft sort mines, and how much it moves the hash head.

Labels enter only here, never a loss (NSH is unsupervised); the trainer adds
these to the step metrics when ``config.train.diagnostics`` is set.

* **Mining precision** of anchor ``i`` (view-1 code ``a_i``, candidates ``b_j`` of
  view 2, the anchor's own other view included)::

      prec_i = (1/m) sum_{r<m} sum_j P_i[r, j] [y_j ~ y_i]

  with ``P_i`` the SoftSort matrix that SortedNCE gathers its positives with
  (same similarities, same temperature) and ``y_j ~ y_i`` "same class" (or "a
  shared label" for multi-hot labels): the expected fraction of true
  neighbours among the soft top-``m``.  :func:`chance_precision` is the
  fraction a random ranking would give.  Candidate ``i`` (the anchor's own other
  view) is always a true neighbour, so ``others=True`` gives the precision of the
  mass that goes to other images, the positives sorting mines beyond it::

      prec'_i = sum_{r<m} sum_{j != i} P_i[r, j] [y_j ~ y_i] / sum_{r<m} sum_{j != i} P_i[r, j]
* **Hash-head gradient norms**: ``||dL_sorted/dtheta_hash||`` against
  ``||dL_rest/dtheta_hash||`` (gradients are linear in the loss, so the rest
  is the total minus the sorted part).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nsh_jax import sorting

__all__ = ["same_label", "mining_precisions", "chance_precision", "subtree_norm"]


def same_label(labels: jax.Array) -> jax.Array:
  """``[n, n]`` float32: 1 where examples share their class (int ``[n]``) or any
  label (multi-hot ``[n, C]``)."""
  if labels.ndim == 1:
    return (labels[:, None] == labels[None, :]).astype(jnp.float32)
  return ((labels.astype(jnp.float32) @ labels.astype(jnp.float32).T) > 0).astype(jnp.float32)


def mining_precisions(codes_a: jax.Array, codes_b: jax.Array, labels: jax.Array,
                      num_positives: int, sort_temperature: float | jax.Array):
  """``(mean prec_i, mean prec'_i)`` (module docstring) from one similarity matrix;
  codes ``[n, d]`` as SortedNCE sorts them, ``sort_temperature`` in similarity units
  (``tau_s``, 1 bit = ``1/d``)."""
  sim = sorting.hamming_similarity(codes_a, codes_b)
  not_self = 1.0 - jnp.eye(sim.shape[0], dtype=jnp.float32)
  top = lambda v: jnp.sum(sorting.soft_sort_apply(sim, v, sort_temperature)[:, :num_positives], 1)
  others_same, others = top(same_label(labels) * not_self), top(not_self)
  # The anchor's own view is always a true neighbour: its top-m mass is m - others.
  every = (others_same + (num_positives - others)) / num_positives
  return jnp.mean(every), jnp.mean(others_same / jnp.maximum(others, 1e-12))


def chance_precision(labels: jax.Array) -> jax.Array:
  """The expected mining precision of a random ranking: mean_i mean_j ``[y_j ~ y_i]``."""
  return jnp.mean(same_label(labels))


def subtree_norm(tree: dict, prefix: str) -> jax.Array:
  """L2 norm over the top-level entries of ``tree`` whose name starts with ``prefix``
  (e.g. ``'hash'``: the hash head, its hidden layer included)."""
  leaves = [leaf for name, sub in tree.items() if name.startswith(prefix)
            for leaf in jax.tree.leaves(sub)]
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))
