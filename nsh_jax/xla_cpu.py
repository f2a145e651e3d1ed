"""XLA:CPU settings: YNNPACK library fusions off, set before JAX starts its CPU client.

jaxlib 0.10's XLA:CPU hands convolutions, dots and reductions to YNNPACK
"library fusions" by default.  For this project's CPU work they are the slow
path (``benchmarks/conv_layers.py`` and ``benchmarks/train_step.py
--compare-xla-defaults``; figures in BENCHMARKS.md).

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


def defaults_env() -> dict[str, str]:
  """This process's environment for a child that should run under XLA's own
  CPU defaults: the flag :func:`apply_defaults` adds removed, and the opt-out set."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(YNN_FLAG + "=")]
  return dict(os.environ, XLA_FLAGS=" ".join(flags), **{OPT_OUT_ENV: "1"})


def ynn_convolutions_on(flags: str | None = None) -> bool:
  """Whether XLA:CPU sends convolutions to YNNPACK under ``flags`` (default: ``XLA_FLAGS``).

  Only the flag's last occurrence counts, as in XLA's parser.  Its value is
  either a list that replaces the default (which includes
  ``individual_convolution``) or signed edits of it (``-individual_convolution``).
  """
  flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
  value = None
  for token in flags.split():
    if token.startswith(YNN_FLAG + "="):
      value = token[len(YNN_FLAG) + 1:]
  if value is None:
    return True
  items = [t for t in value.split(",") if t]
  if items and all(t[0] in "+-" for t in items):
    return "-individual_convolution" not in items
  return "individual_convolution" in items
