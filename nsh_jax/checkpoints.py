"""Orbax checkpoints of the TrainState: save, and restore the newest readable one.

Saves are atomic (Orbax writes a temp directory, then renames), so a killed run
leaves either a whole checkpoint or none; a damaged one found on restore is
moved aside and the next older one is used.  A readable checkpoint of another
model or optimizer (a changed ``bit_list``, head or optimizer in the same work
dir) is a :class:`~nsh_jax.errors.ConfigError`, and is left where it is.
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp

from nsh_jax.errors import ConfigError
from nsh_jax.state import TrainState

__all__ = ["checkpoint_manager", "save", "restore_latest", "structure_mismatch"]


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           create=True),
      # Named, so that a fresh manager can read a checkpoint's metadata.
      item_handlers=ocp.StandardCheckpointHandler())


def _leaf_name(path) -> str:
  # Orbax stores dict keys, dataclass fields and namedtuple fields by name and
  # tuple entries by index; JAX's key paths carry the same under three names.
  return ".".join(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))
                  for k in path)


def _leaf_shapes(tree) -> dict:
  return {_leaf_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def structure_mismatch(manager: ocp.CheckpointManager, step: int, state: TrainState):
  """What differs between checkpoint ``step``'s arrays and ``state``'s, as a phrase,
  or ``None`` when names and shapes agree or the metadata cannot be read (the
  checkpoint is then damaged, which :func:`restore_latest` handles)."""
  try:
    meta = manager.item_metadata(step)
    saved = _leaf_shapes(getattr(meta, "tree", meta))
  except Exception:  # unreadable or missing metadata: a damaged checkpoint
    return None
  want = _leaf_shapes(state)
  for name in sorted(want.keys() | saved.keys()):
    if name not in saved:
      return f"it has no {name}"
    if name not in want:
      return f"it has {name}, which this config's model and optimizer do not"
    if saved[name] != want[name]:
      return f"{name} has shape {saved[name]} there and {want[name]} with this config"
  return None


def save(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  """Writes ``state`` as checkpoint ``step`` and waits until it is on disk."""
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state: TrainState, log=print):
  """Restores the newest readable checkpoint; a damaged one is moved aside with a warning.

  A checkpoint that fails to restore (truncated or unreadable files, missing
  metadata) is renamed to ``<checkpoints>.corrupt/<step>-<time>`` so that training
  can write that step again, and the next older one is tried.  A readable
  checkpoint whose arrays differ from ``state``'s raises :class:`ConfigError`
  (nothing is moved).  Returns ``(state, step or None)``.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    mismatch = structure_mismatch(manager, step, state)
    if mismatch:
      raise ConfigError(
          f"checkpoint {step} in {manager.directory} was written by another model or "
          f"optimizer ({mismatch}); run with the config that wrote it, or give another "
          f"--workdir")
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
