"""Starting JAX's multi-process runtime: explicit addresses, or a cluster's own.

Called by ``main.py`` (process-wide, so never on import).  With all three of
``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and
``process_id`` it calls ``jax.distributed.initialize`` with them; with none it
initialises only where the environment names a coordinator
(``JAX_COORDINATOR_ADDRESS``/``COORDINATOR_ADDRESS`` or ``JAX_PROCESS_COUNT > 1``,
or a cluster manager JAX detects on TPU pods / SLURM); otherwise one process.
On CPU the processes' collectives use gloo.
"""

from __future__ import annotations

import os
from typing import Optional

from nsh_jax.errors import ConfigError

__all__ = ["initialize"]


def _env_wants_cluster() -> bool:
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("COORDINATOR_ADDRESS")
              or int(os.environ.get("JAX_PROCESS_COUNT", "1")) > 1)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: int = 120,
               heartbeat_timeout_s: int = 60) -> bool:
  """Joins the processes; returns whether more than one process was set up.

  ``timeout_s`` bounds the wait for the other processes at start-up;
  ``heartbeat_timeout_s`` how long a silent (killed) process goes unnoticed
  before the others are stopped with an error instead of waiting forever.
  """
  import jax
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ConfigError("--coordinator_address, --num_processes and --process_id go together; "
                      "give all three (or none, where a cluster manager provides them)")
  if not any(given) and not _env_wants_cluster():
    return False
  if not 0 <= (process_id or 0) < (num_processes or 1):
    raise ConfigError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  return jax.process_count() > 1
