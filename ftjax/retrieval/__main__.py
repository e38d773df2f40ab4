"""Command line for retrieval indexes:

  python -m ftjax.retrieval create runs/index [--bm25_only] [--chunk_tokens 200]
  python -m ftjax.retrieval add runs/index docs.jsonl          # or a folder, or tfds:NAME[:SPLIT]
  python -m ftjax.retrieval replace runs/index changed.jsonl
  python -m ftjax.retrieval delete runs/index DOC_ID ...
  python -m ftjax.retrieval search runs/index "who designed the bridge?" --k 5 --method hybrid
  python -m ftjax.retrieval search runs/index --queries questions.txt --json  # or a .jsonl
  python -m ftjax.retrieval evaluate runs/index --qa qa.jsonl --k 1,5,10 --method all

Documents may carry `"acl": ["group", ...]`; `search` and `evaluate` see only public documents
and those shared with `--groups a,b` (the caller's groups), and count only those. Updates wait
up to `--lock_timeout` seconds for another process writing the same index.

`search --json` writes one object per query: {"query", "hits": [{"rank", "doc_id", "chunk_id",
"score", "text"}]}, plus "note" when fewer than k passages matched. `evaluate` reads
{"question" or "input", "doc_id"} rows and reports recall@k and MRR over distinct documents.
User errors (missing or corrupt index or file, bad row, empty query, k < 1, an index locked by
another writer) print one `error:` line and exit with status 2.
"""

import json
import sys
from pathlib import Path

import numpy as np

from ftjax import cli
from ftjax.retrieval import metrics
from ftjax.retrieval.corpus import load_corpus
from ftjax.retrieval.index import METHODS, IndexConfig, RetrievalIndex

GROUPS_HELP = ("comma-separated groups of the caller: documents with an acl are seen only by "
               "its groups (default: public documents only)")

QUERY_KEYS = ("input", "question", "query")
QUESTION_KEYS = ("input", "question")


class UsageError(ValueError):
  """A bad argument or input file; reported as one `error:` line."""


def main(argv=None):
  parser = cli.Parser(prog="python -m ftjax.retrieval",
                      description="Build, update, query and evaluate a retrieval index.")
  commands = parser.add_subparsers(dest="command", required=True)

  def command(name, help_text):
    sub = commands.add_parser(name, help=help_text)
    sub.add_argument("index", help="index folder")
    return sub

  def writer(name, help_text):
    sub = command(name, help_text)
    sub.add_argument("--lock_timeout", type=float, default=RetrievalIndex.lock_timeout_s,
                     help="seconds to wait for another process writing the index")
    return sub

  create = writer("create", "new empty index")
  create.add_argument("--bm25_only", action="store_true")
  create.add_argument("--chunk_tokens", type=int, default=IndexConfig.chunk_tokens)
  create.add_argument("--chunk_overlap", type=int, default=IndexConfig.chunk_overlap)
  for name in ("add", "replace"):
    writer(name, f"{name} documents").add_argument("source", help=".jsonl, folder or tfds:NAME")
  writer("delete", "delete documents by id").add_argument("doc_ids", nargs="+")
  search = command("search", "print the top passages for each query")
  search.add_argument("queries", nargs="*", help="query texts (or use --queries)")
  search.add_argument("--queries", dest="queries_file", metavar="FILE",
                      help="one query per line, or .jsonl rows with " + "/".join(QUERY_KEYS))
  search.add_argument("--k", type=int, default=5)
  search.add_argument("--method", choices=METHODS, default="hybrid")
  search.add_argument("--json", action="store_true", help="one JSON object per query")
  search.add_argument("--groups", help=GROUPS_HELP)
  evaluate = command("evaluate", "recall@k and MRR against gold document ids")
  evaluate.add_argument("--qa", required=True, metavar="FILE",
                        help='.jsonl rows with "question" (or "input") and "doc_id"')
  evaluate.add_argument("--k", default="1,5,10", help="comma-separated cut-offs")
  evaluate.add_argument("--method", choices=METHODS + ("all",), default="all")
  evaluate.add_argument("--json", action="store_true")
  evaluate.add_argument("--groups", help=GROUPS_HELP)
  args = parser.parse_args(argv)

  try:
    cli.run_main(run, args, errors=(UsageError,))
  except OSError as err:  # e.g. an index folder we may not write
    cli.fail(f"{err.filename or args.index}: {err.strerror or err}")


def run(args):
  if hasattr(args, "lock_timeout"):
    if not args.lock_timeout >= 0:
      raise UsageError(f"--lock_timeout must be >= 0, got {args.lock_timeout}")
    RetrievalIndex.lock_timeout_s = args.lock_timeout
  groups = _parse_groups(getattr(args, "groups", None))
  if args.command == "create":
    config = IndexConfig(dense=not args.bm25_only, chunk_tokens=args.chunk_tokens,
                         chunk_overlap=args.chunk_overlap)
    try:
      RetrievalIndex.create(args.index, config)
    except ValueError as err:  # also chunk sizes that do not fit the encoder
      raise UsageError(str(err)) from None
    print(f"created {args.index}")
    return
  if args.command == "search":
    queries = _search_queries(args)
    _check_k(args.k)
  elif args.command == "evaluate":
    ks = _parse_ks(args.k)
    questions, gold = read_qa(args.qa)
  index = RetrievalIndex.open(args.index)
  if args.command in ("add", "replace"):
    corpus = load_corpus(args.source)
    if corpus.skipped:
      print(corpus.report())
    print(getattr(index, args.command)(corpus))
  elif args.command == "delete":
    print(index.delete(args.doc_ids))
  elif args.command == "search":
    _search(index, queries, args.k, args.method, args.json, groups)
  else:
    _evaluate(index, questions, gold, ks, args.method, args.json, groups)


def _parse_groups(text: str | None) -> list[str]:
  return [] if text is None else [g.strip() for g in text.split(",") if g.strip()]


def _check_k(k: int):
  if k < 1:
    raise UsageError(f"--k must be >= 1, got {k}")


def _parse_ks(text: str) -> list[int]:
  try:
    ks = sorted({int(part) for part in text.split(",") if part.strip()})
  except ValueError:
    raise UsageError(f"--k must be comma-separated integers like 1,5,10, got {text!r}") from None
  if not ks:
    raise UsageError("--k names no cut-off")
  _check_k(ks[0])
  return ks


def _search_queries(args) -> list[str]:
  if args.queries and args.queries_file:
    raise UsageError("give queries as arguments or with --queries FILE, not both")
  if args.queries_file:
    return read_queries(args.queries_file)
  if not args.queries:
    raise UsageError("no query: give query texts or --queries FILE")
  for i, query in enumerate(args.queries, 1):
    if not query.strip():
      raise UsageError(f"query {i} is empty")
  return args.queries


def _read_lines(path: Path) -> list[tuple[int, str]]:
  """(line number, line) for the non-blank lines of a UTF-8 text file."""
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise UsageError(f"{path}: no such file") from None
  except UnicodeDecodeError as err:
    raise UsageError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
  except OSError as err:
    raise UsageError(f"{path}: {err.strerror or err}") from None
  return [(lineno, line) for lineno, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json_rows(path: Path):
  """(where, object) for each non-blank line of a JSONL file; where = "file:line"."""
  for lineno, line in _read_lines(path):
    where = f"{path}:{lineno}"
    try:
      row = json.loads(line.rstrip("\r\n"))  # the column on this line
    except json.JSONDecodeError as err:
      raise UsageError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
      raise UsageError(f"{where}: expected a JSON object, got {type(row).__name__}")
    yield where, row


def _text_field(where: str, row: dict, keys: tuple[str, ...]) -> str:
  key = next((k for k in keys if k in row), None)
  if key is None:
    raise UsageError(f"{where}: no " + " or ".join(f'"{k}"' for k in keys) + " field")
  if not isinstance(row[key], str) or not row[key].strip():
    raise UsageError(f'{where}: "{key}" must be non-empty text, got {row[key]!r}')
  return row[key]


def read_queries(path) -> list[str]:
  """Queries from a .jsonl file ({"input"}, {"question"} or {"query"} per row) or a text file
  (one per line); blank lines are skipped."""
  path = Path(path)
  if path.suffix == ".jsonl":
    queries = [_text_field(where, row, QUERY_KEYS) for where, row in _json_rows(path)]
  else:
    queries = [line for _, line in _read_lines(path)]
  if not queries:
    raise UsageError(f"{path}: no queries")
  return queries


def read_qa(path) -> tuple[list[str], list[set[str]]]:
  """Questions and gold doc id sets from {"question" or "input", "doc_id"} rows; "doc_id" may
  also be a list of ids."""
  path = Path(path)
  questions, gold = [], []
  for where, row in _json_rows(path):
    questions.append(_text_field(where, row, QUESTION_KEYS))
    doc_ids = row.get("doc_id")
    doc_ids = [doc_ids] if isinstance(doc_ids, str) else doc_ids
    if (not isinstance(doc_ids, list) or not doc_ids
        or not all(isinstance(d, str) and d for d in doc_ids)):
      raise UsageError(f'{where}: "doc_id" must be a document id (or a list of them), got '
                       f"{row.get('doc_id')!r}")
    gold.append(set(doc_ids))
  if not questions:
    raise UsageError(f"{path}: no questions")
  return questions, gold


def shortfall_note(found: int, k: int, method: str, num_chunks: int) -> str | None:
  """Why a query got fewer than k passages, or None if it got k."""
  if found >= k:
    return None
  if method == "bm25" and found < num_chunks:
    other = "other " if found else ""
    why = f"no {other}passage shares a term with the query"
  else:
    why = f"the index has only {num_chunks} passage(s)"
  return f"{method} found {found} of k={k} hits ({why})"


def _search(index: RetrievalIndex, queries: list[str], k: int, method: str, as_json: bool,
            groups: list[str]):
  results = index.search(queries, k, method, groups=groups)
  num_visible = int(index.visible_rows(groups).sum())
  for number, (query, passages) in enumerate(zip(queries, results), 1):
    note = shortfall_note(len(passages), k, method, num_visible)
    if note:
      print(f"query {number}: {note}", file=sys.stderr)
    if as_json:
      record = {"query": query,
                "hits": [{"rank": p.rank, "doc_id": p.doc_id, "chunk_id": p.chunk_id,
                          "score": p.score, "text": p.text} for p in passages]}
      if note:
        record["note"] = note
      print(json.dumps(record, ensure_ascii=False))
    else:
      print(f"# {query}")
      for p in passages:
        print(f"{p.rank}. [{p.chunk_id}] {p.score:.4f}  {p.text[:100]!r}")


def _evaluate(index: RetrievalIndex, questions: list[str], gold: list[set[str]], ks: list[int],
              method: str, as_json: bool, groups: list[str]):
  methods = list(METHODS) if method == "all" else [method]
  if not index.config.dense:
    if method == "all":
      methods = ["bm25"]
      print("note: BM25-only index: evaluating bm25 only", file=sys.stderr)
    elif method != "bm25":
      raise UsageError(f"{index.path}: BM25-only index; use --method bm25")
  visible_rows = index.visible_rows(groups)
  indexed = {index.chunks[row].doc_id for row in np.flatnonzero(visible_rows)}
  unknown = [i for i, g in enumerate(gold) if not g & indexed]
  if unknown:
    example = sorted(gold[unknown[0]])[0]
    print(f"warning: {len(unknown)} of {len(questions)} questions have no gold document in the "
          f"index visible to the caller (first: {example!r}); they count as misses",
          file=sys.stderr)
  mrr_key = f"mrr@{ks[-1]}"
  results = {}
  for name in methods:
    scores = metrics.evaluate(metrics.ranked_doc_ids(index, questions, name, ks[-1], groups), gold, ks)
    scores[mrr_key] = scores.pop("mrr")  # over the first max(k) documents
    results[name] = scores
  if as_json:
    print(json.dumps({"index": str(index.path), "questions": len(questions),
                      "results": results}))
    return
  columns = [f"recall@{k}" for k in ks] + [mrr_key]
  print(f"{len(questions)} questions, {len(indexed)} documents, "
        f"{int(visible_rows.sum())} passages")
  print(f"{'method':8}" + "".join(f"{c:>11}" for c in columns))
  for name, scores in results.items():
    print(f"{name:8}" + "".join(f"{scores[c]:>11.3f}" for c in columns))


if __name__ == "__main__":
  main()
