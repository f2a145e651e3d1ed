"""Small file helpers shared by the trainer, the evaluator and the command modes."""

from __future__ import annotations

import json
import os

__all__ = ["write_json"]


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON atomically (temp file, then rename); arrays become lists."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
  os.replace(tmp, path)
