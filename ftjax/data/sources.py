"""Training files (JSONL, CSV) -> chat examples, each rejected row recorded with file:line.

Every source is normalised to one shape, a list of messages `[{"role", "content"}, ...]`:
  * `{"input", "output"}`                 -> user: input, assistant: output
  * `{"instruction", "input", "output"}`  -> user: instruction + blank line + input (if any)
  * `{"messages": [...]}`                 -> as given (roles system / user / assistant)
CSV files carry the first two shapes as columns `input`, `output` and optionally `instruction`.

Any shape may carry an `answer` (a JSON field or CSV column): the part of the last assistant reply
that is the fact asked for. Training is the same with or without it; the eval reports the loss on
its tokens apart, since a house style's boilerplate, repeated in every reply, dominates the loss.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

from ftjax.data.report import BadRow, DataConfigError

ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "csv")


class RowError(ValueError):
  """One row cannot become an example; `reason` is one of report.REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail


class ParsedFile(NamedTuple):
  path: str
  examples: list[dict]  # {"messages": [...], "line": int, "answer"?: str}, in file order
  bad_rows: list[BadRow]


def _text_field(record: dict, key: str, required: bool) -> str | None:
  value = record.get(key)
  if value is None:
    if required:
      raise RowError("missing_field", f"no {key!r} field")
    return None
  if not isinstance(value, str):
    raise RowError("wrong_type", f"{key!r} is {type(value).__name__}, expected a string")
  return value


def _check_messages(messages: Any) -> list[dict]:
  if not isinstance(messages, list) or not messages:
    raise RowError("bad_messages", "'messages' must be a non-empty list")
  checked = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict):
      raise RowError("bad_messages", f"messages[{i}] is not an object")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
      raise RowError("bad_messages", f"messages[{i}] role {role!r} is not one of {ROLES}")
    if not isinstance(content, str):
      raise RowError("bad_messages", f"messages[{i}] content is not a string")
    if role == "assistant" and not content.strip():
      raise RowError("empty_output", f"messages[{i}] (assistant) is empty")
    checked.append({"role": role, "content": content})
  if not any(m["role"] == "assistant" for m in checked):
    raise RowError("missing_field", "no assistant message")
  return checked


def to_messages(record: Any) -> list[dict]:
  """One raw record (a dict of python values) -> its messages, or RowError saying why not."""
  if not isinstance(record, dict):
    raise RowError("malformed_json", f"a row must be an object, got {type(record).__name__}")
  if "messages" in record:
    return _check_messages(record["messages"])
  instruction = _text_field(record, "instruction", required=False) or ""
  user = _text_field(record, "input", required=not instruction) or ""
  output = _text_field(record, "output", required=True)
  if not output.strip():
    raise RowError("empty_output", "'output' is empty")
  if instruction.strip() and user.strip():
    user = f"{instruction.strip()}\n\n{user}"
  elif instruction.strip():
    user = instruction.strip()
  elif not user.strip():
    raise RowError("missing_field", "'input' is empty and there is no 'instruction'")
  return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def answer_text(record: Any) -> str:
  """The record's `answer` as text, "" if it has none; a number as JSON writes it. Never an error:
  an answer that the reply does not contain is only counted (`DataReport.add_answer`)."""
  value = record.get("answer") if isinstance(record, dict) else None
  if value is None:
    return ""
  return (value if isinstance(value, str) else json.dumps(value)).strip()


def to_example(record: Any, line: int) -> dict:
  """One raw record -> {"messages", "line"} plus "answer" if it has one (absent otherwise, so the
  examples of a file without answers, and the TFDS dataset named by their hash, do not change)."""
  example = {"messages": to_messages(record), "line": line}
  answer = answer_text(record)
  if answer:
    example["answer"] = answer
  return example


def detect_format(path: str, fmt: str = "auto") -> str:
  if fmt != "auto":
    if fmt not in FORMATS:
      raise DataConfigError(f"data.format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    return fmt
  suffix = Path(path).suffix.lower()
  if suffix in (".jsonl", ".json"):
    return "jsonl"
  if suffix == ".csv":
    return "csv"
  raise DataConfigError(
      f"{path}: cannot tell the format from the extension {suffix!r}; use .jsonl or .csv, or "
      "set data.format")


def iter_jsonl(path: str):
  """(line number, record) for every non-blank line, or (line number, BadRow) where a line is
  not UTF-8 or not JSON: the one JSONL reader that names file:line."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      where = f"{path}:{line_no}"
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as err:
        yield line_no, BadRow(where, "malformed_json", f"not UTF-8 ({err.reason})")
        continue
      if not text.strip():
        continue
      if line_no == 1 and text.lstrip().startswith("["):
        raise DataConfigError(f"{path}: a JSON array; write one JSON object per line (JSONL)")
      try:  # without its line ending, so that the column is on this line (not "line 2 column 1")
        yield line_no, json.loads(text.rstrip("\r\n"))
      except json.JSONDecodeError as err:
        yield line_no, BadRow(where, "malformed_json", f"{err.msg} at column {err.colno}")


def read_jsonl(path: str) -> ParsedFile:
  examples, bad = [], []
  for line_no, record in iter_jsonl(path):
    if isinstance(record, BadRow):
      bad.append(record)
      continue
    try:
      examples.append(to_example(record, line_no))
    except RowError as err:
      bad.append(BadRow(f"{path}:{line_no}", err.reason, err.detail))
  return ParsedFile(path, examples, bad)


def _utf8_text(path: str) -> str:
  """The file decoded as UTF-8 (a BOM dropped); DataConfigError naming file:line if it is not."""
  raw = Path(path).read_bytes()
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    line = raw[:err.start].count(b"\n") + 1
    raise DataConfigError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); "
                          "save the file as UTF-8") from None


def read_csv(path: str) -> ParsedFile:
  examples, bad = [], []
  with io.StringIO(_utf8_text(path), newline="") as f:
    reader = csv.reader(f)
    header = [name.strip().lower() for name in next(reader, [])]
    if "output" not in header or not {"input", "instruction"} & set(header):
      raise DataConfigError(
          f"{path}: a CSV needs a header with columns 'output' and 'input' (optionally "
          f"'instruction'); found {header}")
    start = reader.line_num + 1  # a quoted field may span lines: a row starts after the last
    try:
      for fields in reader:
        line_no, start = start, reader.line_num + 1
        where = f"{path}:{line_no}"
        if not any(field.strip() for field in fields):
          continue
        if len(fields) != len(header):
          bad.append(BadRow(where, "malformed_csv",
                            f"{len(fields)} fields, the header has {len(header)}"))
          continue
        try:
          examples.append(to_example(dict(zip(header, fields)), line_no))
        except RowError as err:
          bad.append(BadRow(where, err.reason, err.detail))
    except csv.Error as err:  # the rest of the file cannot be split into rows
      raise DataConfigError(f"{path}:{start}: unreadable CSV ({err})") from None
  return ParsedFile(path, examples, bad)


def read_file(path: str, fmt: str = "auto") -> ParsedFile:
  if not Path(path).is_file():
    raise DataConfigError(f"{path}: no such data file")
  reader = read_jsonl if detect_format(path, fmt) == "jsonl" else read_csv
  try:
    return reader(path)
  except OSError as err:
    raise DataConfigError(f"{path}: cannot read ({err.strerror or err})") from None
