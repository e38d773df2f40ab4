"""Writes the synthetic paraphrase corpus (see `ftjax.data.synthetic`) as JSONL.

  python data/make_paraphrase_corpus.py --num_docs 1000 --out_dir data/paraphrase

gives `docs.jsonl` ({"id", "title", "text"}) and `qa.jsonl` ({"question", "answer", "doc_id"}),
ready for `RetrievalIndex.add(read_jsonl(...))` and `python -m ftjax.raft`.
"""

import argparse
import json
from pathlib import Path

from ftjax.data.synthetic import make_corpus


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_docs", type=int, default=1000)
  parser.add_argument("--questions_per_doc", type=int, default=1)
  parser.add_argument("--shared_name_fraction", type=float, default=0.2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out_dir", default="data/paraphrase")
  args = parser.parse_args(argv)
  documents, qa = make_corpus(args.num_docs, args.seed, args.questions_per_doc,
                              args.shared_name_fraction)
  out = Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with (out / "docs.jsonl").open("w") as f:
    for d in documents:
      f.write(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
  with (out / "qa.jsonl").open("w") as f:
    for pair in qa:
      f.write(json.dumps(pair._asdict()) + "\n")
  print(f"wrote {len(documents)} documents and {len(qa)} questions to {out}")


if __name__ == "__main__":
  main()
