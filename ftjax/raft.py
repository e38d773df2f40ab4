"""Retrieval-augmented fine-tuning (RAFT) data from QA pairs and their documents.

  python -m ftjax.raft --qa qa.jsonl --corpus docs.jsonl --out raft.jsonl [--meta_out meta.jsonl]

Writes `{"messages": [...]}` rows that `python -m ftjax.train` reads directly; how they are built
(the oracle passage among distractors, sometimes left out) is `ftjax.data.raft`.
"""


def main(argv=None):
  from ftjax import cli
  parser = cli.Parser(prog="python -m ftjax.raft", description=__doc__.splitlines()[0])
  parser.add_argument("--qa", required=True, help="JSONL with question, answer, doc_id")
  parser.add_argument("--corpus", required=True, help="JSONL documents with id, text")
  parser.add_argument("--out", required=True)
  parser.add_argument("--meta_out", default=None)
  parser.add_argument("--num_distractors", type=int, default=4)
  parser.add_argument("--oracle_fraction", type=float, default=0.8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cli.run_main(_build, args)


def _build(args):
  from ftjax.data import raft
  from ftjax.retrieval.corpus import read_jsonl
  corpus = read_jsonl(args.corpus)
  if corpus.skipped:
    print(corpus.report())
  passages = {d.doc_id: d.text for d in corpus.documents}
  examples = raft.build_examples(raft.read_qa_jsonl(args.qa), passages,
                                 num_distractors=args.num_distractors,
                                 oracle_fraction=args.oracle_fraction, seed=args.seed)
  raft.write_jsonl(examples, args.out, args.meta_out)
  print(f"wrote {len(examples)} examples ({sum(e.oracle_included for e in examples)} with the "
        f"oracle) to {args.out}")


if __name__ == "__main__":
  main()
