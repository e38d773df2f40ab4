"""Data files -> `Row`s: each record with its file:line, every string field, and its input/output.

Training files are the JSONL/CSV that `ftjax.data.sources` reads (its JSONL reader is reused, so
file:line means the same thing in both), plus the common `prompt/completion` and
`question/answer` shapes; docs files are the retrieval corpus JSONL (`{"id", "text", ...}`).
Unlike the training pipeline, the audit refuses an unreadable line outright: a row that cannot be
read cannot be checked.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Iterator

from ftjax.data.report import BadRow, DataConfigError
from ftjax.data.sources import detect_format, iter_jsonl
from ftjax.errors import UserError

FieldPath = tuple  # keys and list indices from the record's root to one string
# (input fields, output field) of the flat row shapes, tried in order; `messages` is apart.
SHAPES = ((("instruction", "input"), "output"), (("prompt",), "completion"),
          (("question",), "answer"), (("text",), None))


class AuditInputError(ValueError, UserError):
  """A file cannot be audited (missing, not UTF-8, malformed line); the message names file:line."""


@dataclasses.dataclass
class Row:
  file: str
  line: int
  record: dict  # the parsed JSON object, or a CSV row as {column: cell}

  @property
  def where(self) -> str:
    return f"{self.file}:{self.line}"

  def strings(self) -> Iterator[tuple[FieldPath, str]]:
    """Every string anywhere in the record, with the path that reaches it."""
    yield from _walk(self.record, ())

  def input_output(self) -> tuple[tuple[FieldPath, str], tuple[FieldPath, str]]:
    """((path, text) of the input, (path, text) of the expected output); ((), "") where absent.

    The input is what a model is given and the output what it is trained to say, whatever the
    row's shape; duplicates, conflicts and contamination compare these."""
    record = self.record
    messages = record.get("messages")
    if isinstance(messages, list):
      return _messages_input_output(messages)
    for input_keys, output_key in SHAPES:
      if any(isinstance(record.get(k), str) for k in input_keys):
        inputs = [(k, record[k]) for k in input_keys if isinstance(record.get(k), str)]
        text = "\n\n".join(value for _, value in inputs if value.strip())
        output = record.get(output_key) if output_key else None
        return (((inputs[-1][0],), text),
                ((output_key,), output) if isinstance(output, str) else ((), ""))
    return ((), ""), ((), "")


def _messages_input_output(messages: list) -> tuple[tuple[FieldPath, str], tuple[FieldPath, str]]:
  contents = [(i, m.get("role"), m.get("content")) for i, m in enumerate(messages)
              if isinstance(m, dict) and isinstance(m.get("content"), str)]
  last_reply = max((i for i, role, _ in contents if role == "assistant"), default=None)
  prompt = [(i, text) for i, role, text in contents
            if role in ("system", "user") and (last_reply is None or i < last_reply)]
  input_ = ((("messages", prompt[-1][0], "content"), "\n\n".join(t for _, t in prompt))
            if prompt else ((), ""))
  output = ((("messages", last_reply, "content"), messages[last_reply]["content"])
            if last_reply is not None else ((), ""))
  return input_, output


def _walk(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, str]]:
  if isinstance(value, str):
    yield path, value
  elif isinstance(value, dict):
    for key, item in value.items():
      yield from _walk(item, path + (key,))
  elif isinstance(value, list):
    for index, item in enumerate(value):
      yield from _walk(item, path + (index,))


def field_name(path: FieldPath) -> str:
  """("messages", 1, "content") -> "messages[1].content"."""
  name = ""
  for key in path:
    name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else str(key))
  return name or "row"


def set_field(record: Any, path: FieldPath, value: str):
  for key in path[:-1]:
    record = record[key]
  record[path[-1]] = value


def read_rows(path: str) -> list[Row]:
  """Every non-blank row of a .jsonl/.json/.csv file; AuditInputError on the first bad line."""
  if not Path(path).is_file():
    raise AuditInputError(f"{path}: no such file")
  try:
    fmt = detect_format(path)
  except DataConfigError as err:
    raise AuditInputError(str(err)) from None
  try:
    return _read_jsonl(path) if fmt == "jsonl" else _read_csv(path)
  except OSError as err:
    raise AuditInputError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_jsonl(path: str) -> list[Row]:
  rows = []
  try:
    for line, record in iter_jsonl(path):
      if isinstance(record, BadRow):
        raise AuditInputError(f"{record.where}: {record.detail}")
      if not isinstance(record, dict):
        raise AuditInputError(f"{path}:{line}: a row must be a JSON object, got "
                              f"{type(record).__name__}")
      rows.append(Row(path, line, record))
  except DataConfigError as err:  # a JSON array instead of JSONL
    raise AuditInputError(str(err)) from None
  return rows


def read_csv_table(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """(header, [(line, cells), ...]) with the line each record starts on, as sources.read_csv
  counts it; non-blank records only."""
  raw = Path(path).read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    line = raw[:err.start].count(b"\n") + 1
    raise AuditInputError(f"{path}:{line}: not UTF-8 ({err.reason})") from None
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, [])
  records, start = [], reader.line_num + 1
  try:
    for cells in reader:
      line, start = start, reader.line_num + 1
      if not any(cell.strip() for cell in cells):
        continue
      if len(cells) != len(header):
        raise AuditInputError(f"{path}:{line}: {len(cells)} fields, the header has {len(header)}")
      records.append((line, cells))
  except csv.Error as err:
    raise AuditInputError(f"{path}:{start}: unreadable CSV ({err})") from None
  return header, records


def _read_csv(path: str) -> list[Row]:
  header, records = read_csv_table(path)
  columns = [name.strip().lower() for name in header]
  return [Row(path, line, dict(zip(columns, cells))) for line, cells in records]
