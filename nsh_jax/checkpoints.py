"""Orbax checkpoints of the TrainState: save, and restore the newest readable one.

Saves are atomic (Orbax writes a temp directory, then renames), so a killed run
leaves either a whole checkpoint or none; a damaged one found on restore is
moved aside and the next older one is used.
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp

from nsh_jax.state import TrainState

__all__ = ["checkpoint_manager", "save", "restore_latest"]


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           create=True))


def save(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  """Writes ``state`` as checkpoint ``step`` and waits until it is on disk."""
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state: TrainState, log=print):
  """Restores the newest readable checkpoint; a damaged one is moved aside with a warning.

  A checkpoint that fails to restore (truncated files, missing metadata, wrong
  shapes) is renamed to ``<checkpoints>.corrupt/<step>-<time>`` so that training
  can write that step again, and the next older one is tried.
  Returns ``(state, step or None)``.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(state)), step
    except Exception as e:  # truncated files, missing metadata, bad shapes ...
      src = os.path.join(str(manager.directory), str(step))
      dst_dir = str(manager.directory).rstrip("/") + ".corrupt"
      dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
      if jax.process_index() == 0:  # one host moves it; the others only skip it
        os.makedirs(dst_dir, exist_ok=True)
        os.replace(src, dst)
      manager.reload()
      reason = (str(e).strip().splitlines() or [""])[0].split(" See ")[0][:120]
      log(f"warning: checkpoint {step} in {manager.directory} is unreadable "
          f"({type(e).__name__}: {reason}); moved to {dst}; trying an older one")
  return state, None
