"""glibc malloc settings for ``main.py``: faster XLA:CPU steps, and a heap that cannot outgrow
the machine.

XLA:CPU allocates each execution's buffers afresh; with glibc's defaults freed heap memory
above the trim threshold goes back to the kernel, blocks above the (dynamic, at most
32 MiB) mmap threshold are ``mmap``-ed and unmapped on ``free``, and XLA's threads get
arenas of their own.  :func:`tune`:

* ``M_MMAP_THRESHOLD = 32 MiB`` (glibc's largest) -- blocks up to 32 MiB come from the
  heap and are reused step after step; larger ones are still ``mmap``-ed and returned on
  ``free``, so a step whose buffers reach gigabytes cannot leave freed holes resident in
  the heap;
* ``M_TRIM_THRESHOLD`` at its maximum -- freed heap memory is kept for the next step;
* ``M_ARENA_MAX = 1`` -- threads created afterwards (XLA's) share the main arena.

``heap_only=True`` (``M_MMAP_MAX = 0``: every block from the heap, so not even XLA's
per-execution temp buffer faults) is the unbounded alternative: freed holes stay resident,
and a heap grown at a large batch never shrinks (``tests/test_malloc.py`` shows both).
The settings are process-wide, so the library never applies them on import; ``main.py``
calls :func:`tune` first thing, and other programs may call it themselves before JAX
starts.  ``NSH_JAX_KEEP_MALLOC=1`` leaves malloc alone.  Does nothing outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

OPT_OUT_ENV = "NSH_JAX_KEEP_MALLOC"
# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
_INT_MAX = 2 ** 31 - 1
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def _glibc():
  """The process's C library if it is glibc (has ``mallopt``), else None."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # glibc only
    return libc
  except (OSError, AttributeError):
    return None


def tune(heap_only: bool = False) -> bool:
  """Applies the settings above; returns whether all three took effect.

  False (and nothing changed) outside glibc or with ``NSH_JAX_KEEP_MALLOC=1``.
  Call it before JAX creates its CPU client: ``M_ARENA_MAX`` only binds threads
  that have not allocated yet.
  """
  if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
    return False
  libc = _glibc()
  if libc is None:
    return False
  large = (libc.mallopt(M_MMAP_MAX, 0) if heap_only
           else libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
  ok = [large, libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX), libc.mallopt(M_ARENA_MAX, 1)]
  return all(r == 1 for r in ok)
