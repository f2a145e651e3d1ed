"""nsh-jax: learning to hash for large-scale image retrieval, in JAX.

Public entry points (see README):

* :func:`sorted_nce` -- NSH's SortedNCE loss, exact and ``O(n^2 log n)``.
* :mod:`nsh_jax.sorting` -- Hamming similarity, SoftSort, the OT sorter.
* :mod:`nsh_jax.metrics` -- mAP@k, precision-recall, P@H<=2, P@N.
* :mod:`nsh_jax.retrieval` -- packed codes, Hamming top-k search, index files.
* :mod:`nsh_jax.householder` -- H2Q, ITQ, LSH quantizers.
* :mod:`nsh_jax.nested` -- nested multi-length hash head (NHL).

Importing the package turns XLA:CPU's YNNPACK fusions off if no JAX backend
exists yet (1.32x faster CPU train step here; :mod:`nsh_jax.xla_cpu`;
``NSH_JAX_KEEP_XLA_FLAGS=1`` opts out).  :func:`nsh_jax.malloc.tune` (called
by ``main.py``, process-wide, so never on import) stops XLA:CPU's per-step
page faults.
"""

from nsh_jax import xla_cpu

xla_cpu.apply_defaults()  # before anything below can start a backend

from nsh_jax.losses import sorted_nce  # noqa: E402

__version__ = "0.1.0"
__all__ = ["sorted_nce", "__version__"]
