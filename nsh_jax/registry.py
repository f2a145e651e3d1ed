"""Choices found by name: one :class:`Registry` per kind (loss, backbone, dataset, ...).

A module declares ``THINGS = Registry("thing", "config.key")`` and registers
each implementation with ``@THINGS.register("name")``; callers dispatch with
``THINGS.get(name)`` and config validation lists ``THINGS.names()``, so adding
a choice is one registered function.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple, TypeVar

from nsh_jax.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry:
  """A name -> object table whose lookup failure is a one-line :class:`ConfigError`."""

  def __init__(self, kind: str, config_key: str = ""):
    self.kind = kind
    self.config_key = config_key
    self._items: Dict[str, object] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return add

  def get(self, name: str):
    if name not in self._items:
      where = f"config.{self.config_key}=" if self.config_key else f"{self.kind} "
      raise ConfigError(f"{where}{name!r} is not one of {self.names()}")
    return self._items[name]

  def names(self) -> Tuple[str, ...]:
    return tuple(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
