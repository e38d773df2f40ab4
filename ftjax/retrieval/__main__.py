"""Command line for retrieval indexes:

  python -m ftjax.retrieval create runs/index [--bm25_only] [--chunk_tokens 200]
  python -m ftjax.retrieval add runs/index docs.jsonl          # or a folder, or tfds:NAME[:SPLIT]
  python -m ftjax.retrieval replace runs/index changed.jsonl
  python -m ftjax.retrieval delete runs/index DOC_ID ...
  python -m ftjax.retrieval search runs/index "who designed the bridge?" --k 5 --method hybrid
"""

import argparse

from ftjax.retrieval.corpus import CorpusError, load_corpus
from ftjax.retrieval.index import (METHODS, IndexConfig, RetrievalIndex,
                                   RetrievalIndexError)


def main(argv=None):
  parser = argparse.ArgumentParser(description="Build, update and query a retrieval index.")
  commands = parser.add_subparsers(dest="command", required=True)

  def command(name, help_text):
    sub = commands.add_parser(name, help=help_text)
    sub.add_argument("index", help="index folder")
    return sub

  create = command("create", "new empty index")
  create.add_argument("--bm25_only", action="store_true")
  create.add_argument("--chunk_tokens", type=int, default=IndexConfig.chunk_tokens)
  create.add_argument("--chunk_overlap", type=int, default=IndexConfig.chunk_overlap)
  for name in ("add", "replace"):
    command(name, f"{name} documents").add_argument("source", help=".jsonl, folder or tfds:NAME")
  command("delete", "delete documents by id").add_argument("doc_ids", nargs="+")
  search = command("search", "print the top passages for each query")
  search.add_argument("queries", nargs="+")
  search.add_argument("--k", type=int, default=5)
  search.add_argument("--method", choices=METHODS, default="hybrid")
  args = parser.parse_args(argv)

  try:
    run(args)
  except (CorpusError, RetrievalIndexError) as err:
    parser.exit(2, f"error: {err}\n")


def run(args):
  if args.command == "create":
    RetrievalIndex.create(args.index, IndexConfig(dense=not args.bm25_only,
                                                  chunk_tokens=args.chunk_tokens,
                                                  chunk_overlap=args.chunk_overlap))
    print(f"created {args.index}")
    return
  index = RetrievalIndex.open(args.index)
  if args.command in ("add", "replace"):
    corpus = load_corpus(args.source)
    if corpus.skipped:
      print(corpus.report())
    print(getattr(index, args.command)(corpus))
  elif args.command == "delete":
    print(index.delete(args.doc_ids))
  else:
    for query, passages in zip(args.queries, index.search(args.queries, args.k, args.method)):
      print(f"# {query}")
      for p in passages:
        print(f"{p.rank}. [{p.chunk_id}] {p.score:.4f}  {p.text[:100]!r}")


if __name__ == "__main__":
  main()
