"""Starting JAX's multi-process runtime: explicit addresses, or a cluster's own.

Called by ``main.py`` (process-wide, so never on import).  With all three of
``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and
``process_id`` it calls ``jax.distributed.initialize`` with them; with none it
initialises only where the environment names a coordinator
(``JAX_COORDINATOR_ADDRESS``/``COORDINATOR_ADDRESS`` or ``JAX_PROCESS_COUNT > 1``,
or a cluster manager JAX detects on TPU pods / SLURM); otherwise one process.
On CPU the processes' collectives use gloo.

A killed or hung process must stop the others with one line, not leave them
waiting forever nor abort them with a C++ stack trace (JAX's own reaction to
a missed heartbeat).  So each process runs a small watchdog over the
coordination service's key-value store: it bumps its own counter every
``timeout/10`` s and reads the others'; a peer whose counter stays still for
``heartbeat_timeout_s`` (or a coordinator that stops answering) ends this
process with ``error: ...`` and exit code 1.  JAX's heartbeat is set to
twice that, so it stays the backstop and never fires first.  A process that
finishes normally marks itself ``done`` (at exit, before JAX's shutdown).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Optional

from nsh_jax.errors import ConfigError

__all__ = ["barrier", "initialize"]


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
                             heartbeat_timeout_seconds=2 * heartbeat_timeout_s + 10)
  if jax.process_count() == 1:
    return False
  # JAX exposes no public handle on its coordination client; orbax reads the same attribute.
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client  # pylint: disable=protected-access
  watchdog = _Watchdog(client, jax.process_index(), jax.process_count(), heartbeat_timeout_s)
  watchdog.start()
  atexit.register(watchdog.stop)  # LIFO: runs before JAX's own distributed shutdown
  return True


_barriers = 0  # how many barrier() calls this process made: the same sequence on every process


def barrier(name: str, timeout_s: float = 3600) -> None:
  """Waits until every process has reached this call (nothing with one process).

  Over the coordination service (a timeout of its own), not a collective.  The
  processes' compile times differ widely: JAX's persistent cache is keyed per
  process and written by process 0 only, so with a warm cache process 0 loads
  in a moment what the others spend seconds to minutes compiling.  Without a
  barrier the early process waits inside its first collective instead, under the
  collective runtime's timeouts (gloo's ended a 2-process CPU run that way once;
  not reproduced since).  A peer that dies meanwhile is reported by the watchdog.
  """
  import jax
  global _barriers
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  _barriers += 1
  jax_distributed.global_state.client.wait_at_barrier(  # pylint: disable=protected-access
      f"nsh_jax/{name}/{_barriers}", int(timeout_s * 1000))


_PREFIX = "nsh_jax/alive/"


class _Watchdog:
  """Peer liveness over the coordination key-value store (see the module docstring)."""

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float):
    self._client, self._id, self._n, self._timeout = client, process_id, num_processes, timeout_s
    self._interval = max(0.2, min(2.0, timeout_s / 10))
    self._stop = threading.Event()
    now = time.monotonic()
    self._last_answer = now                       # last time the coordinator answered
    self._peers = {j: (None, now) for j in range(num_processes) if j != process_id}

  def start(self) -> None:
    # Two threads: a key-value call that blocks (dead coordinator) must not stop the check.
    for target in (self._beat, self._check):
      threading.Thread(target=target, name=f"nsh_jax{target.__name__}", daemon=True).start()

  def stop(self) -> None:
    self._stop.set()
    try:
      self._client.key_value_set(f"{_PREFIX}{self._id}", "done", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the others then see a stopped counter, which is also the truth

  def _beat(self) -> None:
    count = 0
    while not self._stop.wait(self._interval):
      count += 1
      try:
        self._client.key_value_set(f"{_PREFIX}{self._id}", str(count), allow_overwrite=True)
        values = {k.rsplit("/", 1)[-1]: v for k, v in self._client.key_value_dir_get(_PREFIX)}
      except Exception:  # pylint: disable=broad-except
        continue           # _check notices the silence
      now = time.monotonic()
      self._last_answer = now
      for j, (old, _) in list(self._peers.items()):
        new = values.get(str(j))
        if new is not None and new != old:
          self._peers[j] = (new, now)

  def _check(self) -> None:
    while not self._stop.wait(self._interval):
      now = time.monotonic()
      if now - self._last_answer > self._timeout:
        self._die(f"the coordinator (process 0) has not answered for {self._timeout:g} s")
      for j, (value, since) in self._peers.items():
        if value != "done" and now - since > self._timeout:
          self._die(f"process {j} has been silent for {self._timeout:g} s (killed, crashed or hung)")

  def _die(self, why: str) -> None:
    if self._stop.is_set():
      return
    print(f"error: process {self._id} of {self._n} stops: {why}. Start the same command on every "
          "process again to resume from the newest checkpoint", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # exit hooks would wait on (or abort with) the lost process
