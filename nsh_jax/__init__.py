"""nsh-jax: learning to hash for large-scale image retrieval, in JAX.

Public entry points (see README):

* :func:`sorted_nce` -- NSH's SortedNCE loss, exact and ``O(n^2 log n)``.
* :mod:`nsh_jax.sorting` -- Hamming similarity, SoftSort, the OT sorter.
* :mod:`nsh_jax.metrics` -- mAP@k, precision-recall, P@H<=2, P@N.
* :mod:`nsh_jax.retrieval` -- packed codes, Hamming top-k search, index files.
* :mod:`nsh_jax.householder` -- H2Q, ITQ, LSH quantizers.
* :mod:`nsh_jax.nested` -- nested multi-length hash head (NHL).
"""

from nsh_jax.losses import sorted_nce

__version__ = "0.1.0"
__all__ = ["sorted_nce", "__version__"]
