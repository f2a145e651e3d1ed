"""glibc malloc settings that stop XLA:CPU's per-step page faults (used by ``main.py``).

XLA:CPU allocates each execution's buffers afresh.  glibc serves blocks above
its mmap threshold (at most 32 MiB) with ``mmap`` and unmaps them on ``free``,
so every train step maps new pages and the kernel zeroes them on first touch:
tens of thousands of minor page faults per small-CNN step
(``benchmarks/train_step.py`` counts them; BENCHMARKS.md).  :func:`tune` makes glibc keep
freed memory instead:

* ``M_MMAP_MAX = 0`` -- no ``mmap`` for large blocks; they come from the heap;
* ``M_TRIM_THRESHOLD`` at its maximum -- freed heap memory is not returned;
* ``M_ARENA_MAX = 1`` -- threads created afterwards (XLA's) share the main
  arena, whose heap can grow past the 64 MiB limit of per-thread arenas.

After it a step faults no pages and runs faster
(``benchmarks/train_step.py --malloc both``, BENCHMARKS.md).  The price: the process keeps
its peak heap size until it exits, and where one step's buffers reach gigabytes
(SortedNCE at batch 2048 on frozen features) the one heap fragments and grows
step after step until the kernel kills the process, where glibc's defaults stay
near the step's own peak (docs/pretrained.md): set ``NSH_JAX_KEEP_MALLOC=1`` there.  The settings are process-wide, so the
library never applies them on import; ``main.py`` calls :func:`tune` first
thing, and other programs may call it themselves before JAX starts.
``NSH_JAX_KEEP_MALLOC=1`` leaves malloc alone.  Does nothing outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

OPT_OUT_ENV = "NSH_JAX_KEEP_MALLOC"
# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2 ** 31 - 1


def _glibc():
  """The process's C library if it is glibc (has ``mallopt``), else None."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # glibc only
    return libc
  except (OSError, AttributeError):
    return None


def tune() -> bool:
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
  ok = [libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX),
        libc.mallopt(M_ARENA_MAX, 1)]
  return all(r == 1 for r in ok)
