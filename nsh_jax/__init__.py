"""nsh-jax: learning to hash for large-scale image retrieval, in JAX.

Public entry points (see README and docs/architecture.md):

* :func:`sorted_nce` -- NSH's SortedNCE loss, exact and ``O(n^2 log n)``.
* :mod:`nsh_jax.sorting` -- Hamming similarity, SoftSort, the OT sorter.
* :mod:`nsh_jax.metrics` -- mAP@k, precision-recall, P@H<=2, P@N.
* :mod:`nsh_jax.retrieval` -- packed codes, Hamming top-k search, index files.
* :mod:`nsh_jax.householder` -- H2Q, ITQ, LSH quantizers.
* :mod:`nsh_jax.nested` -- nested multi-length hash head (NHL).

Importing the package changes nothing outside it: no environment variables, no
allocator or compiler settings.  The process-wide settings ``main.py`` applies
are public for other programs to call first thing:
:func:`nsh_jax.xla_cpu.apply_defaults` and :func:`nsh_jax.malloc.tune`.
"""

from nsh_jax.losses import sorted_nce

__version__ = "0.1.0"
__all__ = ["sorted_nce", "__version__"]
