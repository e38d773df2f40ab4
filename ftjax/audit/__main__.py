"""python -m ftjax.audit FILE... [--eval F] [--docs F] [--json OUT] [--fix redact|drop --out F]

Prints a table of what was found; exits 0 (1 with --strict when pii, secrets or contamination
were found) and 2, with one `error:` line, when an option or an input file is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys

from ftjax import cli
from ftjax.audit.checks import audit_files
from ftjax.audit.fix import check_output_path, drop_rows, redact_file
from ftjax.audit.report import BLOCKING


def _parser() -> argparse.ArgumentParser:
  parser = cli.Parser(prog="python -m ftjax.audit", description=__doc__.splitlines()[0])
  parser.add_argument("files", nargs="+", metavar="FILE", help="training data (.jsonl or .csv)")
  parser.add_argument("--eval", action="append", default=[], metavar="FILE",
                      help="eval data, checked for contamination of the training data")
  parser.add_argument("--docs", action="append", default=[], metavar="FILE",
                      help="retrieval corpus JSONL ({'id', 'text', ...})")
  parser.add_argument("--json", metavar="OUT", help="write the full report as JSON ('-': stdout)")
  parser.add_argument("--fix", choices=("redact", "drop"),
                      help="write a fixed copy of the (single) training FILE to --out")
  parser.add_argument("--out", metavar="FILE", help="where --fix writes; never an input")
  parser.add_argument("--show", type=int, default=20, metavar="N", help="findings to print")
  parser.add_argument("--strict", action="store_true",
                      help=f"exit 1 when any {', '.join(BLOCKING)} finding exists")
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.fix and not args.out:
    parser.error("--fix needs --out FILE")
  if args.out and not args.fix:
    parser.error("--out is only used with --fix redact|drop")
  if args.fix and len(args.files) != 1:
    parser.error(f"--fix writes one file; give exactly one training FILE (got {len(args.files)})")
  return cli.run_main(_run, args, exit=False)


def _run(args: argparse.Namespace) -> int:
  if args.fix:
    check_output_path(args.out, [*args.files, *args.eval, *args.docs])
  report = audit_files(args.files, args.eval, args.docs)
  if args.fix == "redact":
    replaced = redact_file(args.files[0], args.out, report.findings)
    fix_line = f"redacted {replaced} spans -> {args.out}"
  elif args.fix == "drop":
    flagged = {f["line"] for f in report.findings if f["file"] == args.files[0]}
    dropped = drop_rows(args.files[0], args.out, flagged)
    fix_line = f"dropped {dropped} flagged rows -> {args.out}"
  human = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON
  print(report.table(args.show), file=human)
  if args.fix:
    print(fix_line, file=human)
  if args.json == "-":
    json.dump(report.to_json(), sys.stdout, indent=1, ensure_ascii=False)
    print()
  elif args.json:
    try:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=1, ensure_ascii=False)
    except OSError as err:
      print(f"error: --json {args.json}: {err.strerror}", file=sys.stderr)
      return 2
  return 1 if args.strict and report.of_kinds(BLOCKING) else 0


if __name__ == "__main__":
  sys.exit(main())
