"""The index survives crashes at every write step, concurrent writers lose nothing, manifests
cannot point outside the index, and bad input is one `error:` line (exit status 2)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftjax.retrieval import store as store_lib
from ftjax.retrieval.__main__ import main
from ftjax.retrieval.corpus import Document
from ftjax.retrieval.index import IndexConfig, RetrievalIndex, RetrievalIndexError

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["harbour canal boats", "bridge engineer", "secret payroll", "lighthouse coast",
           "violet orchard"]
BASE_DOCS = [
    Document("bridge", "The Kellen Bridge over the Arno was designed by the engineer Marta Voss."),
    Document("canal", "The Plimsoll Canal links the harbour to the inland lakes; boats queue."),
    Document("lighthouse", "The Orrin lighthouse guided ships along the rocky coast."),
    Document("payroll", "Secret payroll figures for the bridge engineer team.", acl=("hr",)),
    Document("boats", "Harbour boats pay a canal toll in spring."),
]
NEW_DOCS = [Document("orchard", "A violet orchard grows beside the canal harbour."),
            Document("memo", "Secret memo on payroll for the lighthouse keepers.", acl=("hr",))]


class SimulatedCrash(BaseException):
  """Not an Exception: nothing in the index code catches it, as nothing survives a kill."""


@pytest.fixture(scope="module")
def chunk_tokenizer():
  from transformers import AutoTokenizer
  from ftjax.checkpoints import resolve
  return AutoTokenizer.from_pretrained(str(resolve(IndexConfig.encoder)))


def _open(path, tokenizer, fault_hook=None):
  index = RetrievalIndex.open(path, fault_hook=fault_hook)
  index._chunk_tokenizer = tokenizer  # skip reloading it for every crash
  return index


def _results(index):
  """Everything a caller can observe: chunk ids and scores per query, for two callers."""
  out = {}
  for groups in (None, ["hr"]):
    hits = index.search_rows(QUERIES, k=4, method="bm25", groups=groups)
    out[str(groups)] = [[(index.chunks[r].chunk_id, round(float(s), 5))
                         for s, r in zip(scores, rows) if r >= 0]
                        for scores, rows in zip(hits.scores, hits.rows)]
  out["documents"] = sorted(index.doc_rows())
  out["rows"] = (len(index.segments), len(index.chunks))  # what compaction changes
  return out


OPERATIONS = {
    "add": lambda index: index.add(NEW_DOCS),
    "replace": lambda index: index.replace([Document("canal", "The canal was filled in; a violet "
                                                              "orchard grows there now.")]),
    "delete": lambda index: index.delete(["bridge", "payroll"]),
    "compact": lambda index: index.compact(),
}


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, chunk_tokenizer):
  path = tmp_path_factory.mktemp("base") / "index"
  index = RetrievalIndex.create(path, IndexConfig(dense=False))
  index._chunk_tokenizer = chunk_tokenizer
  index.add(BASE_DOCS)
  index.delete(["lighthouse"])  # a tombstone, so compaction has something to drop
  index.add([BASE_DOCS[2]])
  return path


def _count_steps(operation, path, tokenizer):
  labels = []
  operation(_open(path, tokenizer, fault_hook=labels.append))
  return labels


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_crash_at_every_write_step_leaves_the_previous_index(name, base_index, tmp_path,
                                                             chunk_tokenizer):
  operation = OPERATIONS[name]
  before = _results(_open(base_index, chunk_tokenizer))
  reference = tmp_path / "reference"
  shutil.copytree(base_index, reference)
  labels = _count_steps(operation, reference, chunk_tokenizer)
  after = _results(_open(reference, chunk_tokenizer))
  assert after != before  # the operation changes what a search returns
  assert any(label.startswith("write .manifest.json") for label in labels)
  if name == "add":
    assert any(label.startswith("write .bm25_vocab.json") for label in labels)  # the case

  for step, label in enumerate(labels, 1):
    path = tmp_path / f"crash{step}"
    shutil.copytree(base_index, path)

    def crash(current, count=[0]):
      count[0] += 1
      if count[0] == step:
        raise SimulatedCrash(current)

    with pytest.raises(SimulatedCrash):
      operation(_open(path, chunk_tokenizer, fault_hook=crash))
    # The interrupted update is invisible: the index opens and searches exactly as before.
    assert _results(_open(path, chunk_tokenizer)) == before, (name, step, label)
    # The next writer cleans up what the crash left and its update lands in full.
    operation(_open(path, chunk_tokenizer))
    assert _results(_open(path, chunk_tokenizer)) == after, (name, step, label)
    leftovers = [p.name for p in path.rglob("*") if p.name.endswith(".tmp")]
    segments = {p.name for p in (path / "segments").iterdir()}
    assert not leftovers and segments == set(_open(path, chunk_tokenizer).segments), label
    shutil.rmtree(path)


# A process that adds documents to an index and dies (os._exit: no clean-up, no finally) just
# before write step N, through a fault hook of its own: production code has no such switch.
KILLED_ADD = """
import os, sys
from ftjax.retrieval import RetrievalIndex, read_jsonl

path, docs, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []

def kill(label):
  steps.append(label)
  if len(steps) == kill_at:
    os._exit(99)

RetrievalIndex.open(path, fault_hook=kill).add(read_jsonl(docs))
"""


def test_production_code_has_no_crash_switch():
  """Crashes are injected only through a caller's `fault_hook`: nothing in ftjax ends the process
  on an environment variable or a module-global hook."""
  offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "ftjax").rglob("*.py")
               if any(s in p.read_text(encoding="utf-8")
                      for s in ("os._exit", "CRASH_AT", "write_step_hook"))]
  assert offenders == []


def _write_docs(path, documents):
  path.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text,
                                      **({"acl": list(d.acl)} if d.acl else {})}) + "\n"
                          for d in documents))


def test_killed_add_leaves_the_previous_index(base_index, tmp_path, chunk_tokenizer):
  """A real process death (os._exit, no clean-up, lock released by the OS) mid-write of the
  vocabulary, of a segment and of the manifest."""
  docs = tmp_path / "new.jsonl"
  _write_docs(docs, NEW_DOCS)
  before = _results(_open(base_index, chunk_tokenizer))
  labels = _count_steps(OPERATIONS["add"], shutil.copytree(base_index, tmp_path / "count"),
                        chunk_tokenizer)
  after = _results(_open(tmp_path / "count", chunk_tokenizer))
  # One kill in each file an add writes (each subprocess costs seconds); the in-process test
  # above covers every step.
  chosen = [i for i, label in enumerate(labels, 1)
            if label.startswith(("write terms.npy", "publish segment", "write .bm25_vocab.json",
                                 "write .manifest.json"))]
  assert len(chosen) == 4
  for step in chosen:
    path = shutil.copytree(base_index, tmp_path / f"kill{step}")
    killed = subprocess.run([sys.executable, "-c", KILLED_ADD, str(path), str(docs), str(step)],
                            cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == 99, (labels[step - 1], killed.stderr[-2000:])
    assert _results(_open(path, chunk_tokenizer)) == before, labels[step - 1]
    assert _open(path, chunk_tokenizer).add(NEW_DOCS).added == 2  # the lock was released
    assert _results(_open(path, chunk_tokenizer)) == after, labels[step - 1]


def test_concurrent_adders_lose_no_document(tmp_path):
  """Four processes add 25 distinct documents each at once; a reader polling meanwhile only ever
  sees whole updates."""
  path = tmp_path / "index"
  RetrievalIndex.create(path, IndexConfig(dense=False))
  num_writers, per_writer = 4, 25
  files = []
  for w in range(num_writers):
    files.append(tmp_path / f"docs{w}.jsonl")
    _write_docs(files[-1], [Document(f"w{w}-d{i}", f"writer{w} document{i} about topic{w}x{i}")
                            for i in range(per_writer)])
  procs = [subprocess.Popen([sys.executable, "-m", "ftjax.retrieval", "add", str(path), str(f)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for f in files]
  seen = set()
  while any(p.poll() is None for p in procs):
    count = RetrievalIndex.open(path).num_documents  # readers take no lock and never fail
    assert count % per_writer == 0, count
    seen.add(count)
    time.sleep(0.2)
  outputs = [p.communicate() for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0 and f"added={per_writer}" in out, err[-2000:]
  index = RetrievalIndex.open(path)
  assert index.num_documents == num_writers * per_writer
  assert sorted(index.doc_rows()) == sorted(f"w{w}-d{i}" for w in range(num_writers)
                                            for i in range(per_writer))
  hits = index.search([f"topic{w}x{i}" for w in range(num_writers) for i in range(per_writer)],
                      k=1, method="bm25")
  assert [h[0].doc_id for h in hits] == [f"w{w}-d{i}" for w in range(num_writers)
                                         for i in range(per_writer)]
  assert len(index.segments) == num_writers


def test_locked_index_is_a_clear_error(tmp_path, capsys):
  path = tmp_path / "index"
  RetrievalIndex.create(path, IndexConfig(dense=False))
  docs = tmp_path / "docs.jsonl"
  _write_docs(docs, NEW_DOCS)
  with store_lib.locked(path, 1):
    err = _user_error(capsys, "add", str(path), str(docs), "--lock_timeout", "0.2")
  assert err == f"error: index {path} is locked by pid {os.getpid()} (waited 0.2 s for it to " \
                "finish writing)"
  assert RetrievalIndex.open(path).num_documents == 0


def _segment_escape_cases(tmp_path, path):
  """(name, how to damage a copy of the index) for manifests naming files outside the index."""
  outside = tmp_path / "outside"
  outside.mkdir()
  segment = json.loads((path / "manifest.json").read_text())["segments"][0]
  shutil.copytree(path / "segments" / segment, outside / "segment")

  def set_segments(names):
    def damage(p):
      manifest = json.loads((p / "manifest.json").read_text())
      manifest["segments"] = names
      (p / "manifest.json").write_text(json.dumps(manifest))
    return damage

  def symlink_segment(p):
    os.symlink(outside / "segment", p / "segments" / "linked")
    set_segments(["linked"])(p)

  def symlink_file(p):
    chunks = p / "segments" / segment / "chunks.jsonl"
    chunks.unlink()
    os.symlink(outside / "segment" / "chunks.jsonl", chunks)

  return [("absolute", set_segments([str(outside / "segment")])),
          ("dotdot", set_segments(["../../outside/segment"])),
          ("nested", set_segments([f"{segment}/../../../outside/segment"])),
          ("parent", set_segments([".."])),
          ("symlinked segment", symlink_segment),
          ("symlinked file", symlink_file)]


def test_manifest_paths_stay_inside_the_index(tmp_path, chunk_tokenizer):
  path = tmp_path / "index"
  index = RetrievalIndex.create(path, IndexConfig(dense=False))
  index._chunk_tokenizer = chunk_tokenizer
  index.add(BASE_DOCS)
  for name, damage in _segment_escape_cases(tmp_path, path):
    copy = shutil.copytree(path, tmp_path / name.replace(" ", "_"), symlinks=True)
    damage(copy)
    with pytest.raises(RetrievalIndexError, match="outside the index folder"):
      RetrievalIndex.open(copy)


def _user_error(capsys, *argv) -> str:
  with pytest.raises(SystemExit) as exit_info:
    main(list(argv))
  err = capsys.readouterr().err
  assert exit_info.value.code == 2, err
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  return err.strip()


def test_bad_input_is_one_error_line(tmp_path, capsys, chunk_tokenizer):
  path = tmp_path / "index"
  index = RetrievalIndex.create(path, IndexConfig(dense=False))
  index._chunk_tokenizer = chunk_tokenizer
  index.add(BASE_DOCS)
  segment = index.segments[0]
  not_utf8 = tmp_path / "latin1.jsonl"
  not_utf8.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n')
  bad_acl = tmp_path / "acl.jsonl"
  bad_acl.write_text('{"id": "a", "text": "fine"}\n\n{"id": "b", "text": "x", "acl": []}\n')
  string_acl = tmp_path / "acl2.jsonl"
  string_acl.write_text('{"id": "a", "text": "fine", "acl": "hr"}\n')

  def damaged(name, damage):
    copy = shutil.copytree(path, tmp_path / name, symlinks=True)
    damage(copy)
    return str(copy)

  def write(relative, text):
    return lambda p: (p / relative).write_text(text)

  def truncate(relative):
    return lambda p: (p / relative).write_bytes((p / relative).read_bytes()[:20])

  cases = [
      (["add", path, not_utf8], f"{not_utf8}:2: not UTF-8 text"),
      (["add", path, bad_acl], f"{bad_acl}:3: acl is empty"),
      (["add", path, string_acl], f"{string_acl}:1: acl must be a list of group names"),
      (["search", path, "", "--method", "bm25"], "query 1 is empty"),
      (["search", path, "ok", "   ", "--method", "bm25"], "query 2 is empty"),
      (["search", path, "canal", "--k", "0"], "--k must be >= 1, got 0"),
      (["search", path, "canal", "--k", "-2"], "--k must be >= 1, got -2"),
      (["evaluate", path, "--qa", bad_acl, "--k", "0"], "--k must be >= 1, got 0"),
      (["search", damaged("truncated", truncate("manifest.json")), "canal"],
       "manifest.json: corrupt manifest"),
      (["search", damaged("list", write("manifest.json", "[]")), "canal"],
       "corrupt manifest (not a JSON object)"),
      (["search", damaged("no-segments", write("manifest.json", json.dumps(
          {"format": 1, "config": {"dense": False}, "segments": "x", "deleted_rows": []}))),
        "canal"], '"segments" must be a list'),
      (["add", damaged("escape", write("manifest.json", json.dumps(
          {"format": 1, "config": {"dense": False}, "segments": ["../.."],
           "deleted_rows": []}))), not_utf8], "is outside the index folder"),
      (["search", damaged("vocab", truncate("bm25_vocab.json")), "canal"],
       "bm25_vocab.json: corrupt BM25 vocabulary"),
      (["search", damaged("terms", truncate(f"segments/{segment}/terms.npy")), "canal"],
       "corrupt segment"),
      (["search", damaged("gone", lambda p: shutil.rmtree(p / "segments" / segment)), "canal"],
       "missing chunks.jsonl"),
      (["add", path, not_utf8, "--lock_timeout", "-1"], "--lock_timeout must be >= 0"),
  ]
  for argv, message in cases:
    assert message in _user_error(capsys, *map(str, argv)), argv
  assert RetrievalIndex.open(path).num_documents == len(BASE_DOCS)  # nothing was half-added
