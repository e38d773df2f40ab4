"""Dataclasses read from and written to JSON by their field annotations: the base of the typed
results (`ftjax.experiment.results`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Optional

Interval = Optional[list]  # [lo, hi] (JSON keeps lists), or None when n = 0

_OMIT = {"omit_none": True}


def optional(default=None):
  """A field left out of `to_dict` when None (a key `summary.json` writes only when measured)."""
  return dataclasses.field(default=default, metadata=_OMIT)


class Record:
  """A dataclass read from / written to the JSON of `summary.json`: nested records are converted
  by their field annotations (`Record`, `Optional[Record]`, `dict[str, Record]`,
  `list[Record]`); everything else is kept as JSON gives it."""

  @classmethod
  def from_dict(cls, d: dict | None):
    if d is None:
      return None
    if not isinstance(d, dict):
      raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name in d:
        kwargs[f.name] = _convert(hints[f.name], d[f.name])
    return cls(**kwargs)

  def to_dict(self) -> dict:
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if value is None and f.metadata.get("omit_none"):
        continue
      out[f.name] = _plain(value)
    return out


def _record_type(tp) -> type | None:
  if isinstance(tp, type) and issubclass(tp, Record):
    return tp
  return None


def _convert(tp, value):
  if value is None:
    return None
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    inner = [a for a in args if a is not type(None)]
    return _convert(inner[0], value) if len(inner) == 1 else value
  if _record_type(tp):
    return tp.from_dict(value)
  if origin is dict and len(args) == 2 and _record_type(args[1]):
    return {k: args[1].from_dict(v) for k, v in value.items()}
  if origin is list and args and _record_type(args[0]):
    return [args[0].from_dict(v) for v in value]
  return value


def _plain(value):
  if isinstance(value, Record):
    return value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value
