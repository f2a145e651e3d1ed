"""XLA:CPU settings: YNNPACK library fusions off, set before JAX starts its CPU client.

jaxlib 0.10's XLA:CPU hands convolutions, dots and reductions to YNNPACK
"library fusions" by default.  For this project's CPU work they are the slow
path (measured on the small CNN's step and EfficientNet's extraction; BENCHMARKS.md).

XLA reads ``XLA_FLAGS`` once, when the first backend is created, so
:func:`apply_defaults` only adds the flag while no JAX backend exists yet, and
never overrides a value the user set.  It changes the process environment, so
the library never calls it: ``main.py`` does, first thing, and other programs
may.  Set
``NSH_JAX_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` alone.  TPU and GPU
backends ignore ``xla_cpu_*`` flags.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
OPT_OUT_ENV = "NSH_JAX_KEEP_XLA_FLAGS"


def _backends_started() -> bool:
  """Whether a JAX backend exists already (then ``XLA_FLAGS`` is read and fixed)."""
  import sys
  if "jax" not in sys.modules:
    return False  # nothing can have started a backend
  try:  # JAX has no public query for this; a moved private name must not break callers
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return True  # unknown: do not claim the flag can still take effect


def apply_defaults() -> bool:
  """Turns YNNPACK fusions off via ``XLA_FLAGS`` if that can still take effect.

  Returns whether the flag was added.  Does nothing when the user already set
  the flag, opted out with ``NSH_JAX_KEEP_XLA_FLAGS=1``, or a JAX backend has
  already been created (the flag would be read too late).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if (os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or YNN_FLAG + "=" in flags
      or _backends_started()):
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG + "=").strip()
  return True
