"""Stage outputs cached under a hash of everything that determines them.

Each stage (an index, a training run, one arm's answers) owns a folder
`cache/<kind>-<hash>/`; `done.json` is written last, so a folder without it is unfinished (a
training stage resumes from its checkpoints, others start over). A rerun with the same config
finds every stage done and only rebuilds the report; changing one arm's setting changes only
that arm's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def digest(key: Any) -> str:
  """A short stable hash of a JSON-able key."""
  text = json.dumps(key, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_values(config, keys) -> dict[str, Any]:
  """{dotted key: its value (a group as a dict)} of `config` (an ml_collections ConfigDict)."""
  out = {}
  for key in keys:
    value = config
    for part in key.split("."):
      value = value[part]
    out[key] = value.to_dict() if hasattr(value, "to_dict") else (
        list(value) if isinstance(value, tuple) else value)
  return out


class StageCache:
  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)
    self.root.mkdir(parents=True, exist_ok=True)
    self.computed: list[str] = []  # stages computed in this process (tests check caching)
    self.reused: list[str] = []

  def folder(self, kind: str, key: Any) -> Path:
    return self.root / f"{kind}-{digest(key)}"

  def run(self, kind: str, key: Any, build: Callable[[Path], dict], *,
          fresh: bool = True) -> tuple[Path, dict]:
    """(folder, result) of the stage: read back if done, else `build(folder)` and mark done.

    `fresh`: clear an unfinished folder first (False keeps it, e.g. for training to resume).
    """
    folder = self.folder(kind, key)
    done = folder / "done.json"
    if done.is_file():
      self.reused.append(folder.name)
      return folder, json.loads(done.read_text())["result"]
    if fresh and folder.exists():
      shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
    result = build(folder)
    tmp = folder / "done.json.tmp"
    tmp.write_text(json.dumps({"kind": kind, "result": result}, indent=2, default=str))
    os.replace(tmp, done)
    self.computed.append(folder.name)
    return folder, result
