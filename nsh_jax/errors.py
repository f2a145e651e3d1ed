"""The errors a user can cause, each carrying a one-line message that says what to fix.

``main.py`` prints any of them as ``error: <message>`` (exit 2); everything else
is a bug and keeps its traceback under ``--debug``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "TrainingError", "CodesFileError", "USER_ERRORS",
           "describe"]


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


def describe(e: Exception, process_count: int = 1):
  """``(one-line message, exit status)`` for an exception that ends a command:
  2 for the user's errors (and a failed peer in a multi-process run), 1 for bugs."""
  if process_count > 1 and type(e).__name__ == "JaxRuntimeError":
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return (f"another process of this {process_count}-process run stopped or failed ({first}); "
            f"start the same command on every process again to resume from the newest "
            f"checkpoint"), 2
  if isinstance(e, USER_ERRORS):
    return " ".join(str(e).split()), 2
  return f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1
