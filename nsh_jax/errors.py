"""The errors a user can cause, each carrying a one-line message that says what to fix.

``main.py`` prints any of them as ``error: <message>`` (exit 2); everything else
is a bug and keeps its traceback under ``--debug``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "TrainingError", "CodesFileError", "USER_ERRORS"]


class ConfigError(ValueError):
  """A bad configuration value; the message names the key and the fix."""


class DataError(ValueError):
  """Missing or malformed data; the message says what to fix."""


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and where to resume from."""


class CodesFileError(ValueError):
  """A codes/index file is missing, corrupt or inconsistent."""


# What the command line reports as one line (ValueError covers bad arguments
# to the library's public functions; FileNotFoundError missing inputs).
USER_ERRORS = (ConfigError, DataError, TrainingError, CodesFileError, ValueError,
               FileNotFoundError, KeyError)
