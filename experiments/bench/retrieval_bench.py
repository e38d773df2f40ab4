"""Indexing and query throughput of BM25 and dense retrieval, beside a plain NumPy exact search.

  python experiments/bench/retrieval_bench.py --num_docs 100000 \
      --out experiments/bench/results/retrieval.json

Steps, each timed once on the synthetic paraphrase corpus (`ftjax.data.synthetic`):
  BM25 index    `RetrievalIndex(dense=False).add`: chunking, bm25s term ids, write; then the
                bm25s weights (built on the first search)
  full index    the same with MiniLM embeddings of every chunk (jit-compiled Flax encoder); a
                sample is also encoded by sentence-transformers (PyTorch) for comparison
  queries       BM25, dense (encode queries + exact top-k) and hybrid through `search_rows`; the
                exact top-k alone for JAX (`dense.search`) and NumPy (matmul + argpartition)
  update        replace 100 documents of the full index (encodes only those) and search again
The record (machine, versions, commit, figures) is written as JSON and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def numpy_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int, batch: int = 256):
  """Plain NumPy exact search: matmul, argpartition, then sort the k winners."""
  rows = np.empty((len(queries), k), np.int64)
  for start in range(0, len(queries), batch):
    scores = queries[start:start + batch] @ embeddings.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    rows[start:start + batch] = np.take_along_axis(top, order, 1)
  return rows


def machine() -> dict:
  """The provenance record's machine (the CPU's name and features included), with memory and
  load at the start."""
  from ftjax import provenance
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return {**provenance.machine(), "memory_gib": round(mem, 1),
          "load_avg_1m_start": os.getloadavg()[0]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_docs", type=int, default=100_000)
  parser.add_argument("--num_queries", type=int, default=1000)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=64, help="encoder batch size")
  parser.add_argument("--torch_sample", type=int, default=2000,
                      help="passages also encoded with sentence-transformers (0: skip)")
  parser.add_argument("--out", default="experiments/bench/results/retrieval.json")
  args = parser.parse_args(argv)

  from ftjax import provenance
  from ftjax.retrieval import dense, metrics
  from ftjax.retrieval.corpus import Document
  from ftjax.retrieval.index import IndexConfig, RetrievalIndex
  from ftjax.data.synthetic import make_corpus

  record = {**provenance.record(("bm25s",)), "machine": machine(), "args": vars(args),
            "results": {}}
  res = record["results"]
  documents, qa = make_corpus(args.num_docs, seed=0)
  rng = np.random.default_rng(0)
  qa = [qa[i] for i in rng.choice(len(qa), min(args.num_queries, len(qa)), replace=False)]
  questions = [pair.question for pair in qa]
  gold = [{pair.doc_id} for pair in qa]
  print(f"{len(documents)} documents, {len(questions)} queries, {record['machine']}")

  encoder = dense.load_encoder()
  tmp = tempfile.TemporaryDirectory()

  # BM25 only: chunking + term ids + write, then the bm25s weights on the first search.
  bm25_index = RetrievalIndex.create(Path(tmp.name) / "bm25", IndexConfig(dense=False),
                                     encoder=encoder)
  _, res["bm25_add_s"] = _timed(bm25_index.add, documents)
  _, res["bm25_weights_s"] = _timed(bm25_index.search, questions[:1], args.k, "bm25")
  res["bm25_index_s"] = res["bm25_add_s"] + res["bm25_weights_s"]
  res["passages"] = bm25_index.num_chunks
  bm25_hits, res["bm25_query_s"] = _timed(bm25_index.search_rows, questions, args.k, "bm25")

  # BM25 + dense: the same plus MiniLM embeddings of every chunk (compilation included).
  index = RetrievalIndex.create(Path(tmp.name) / "full", encoder=encoder)
  _, res["full_add_s"] = _timed(index.add, documents)
  res["dense_index_s"] = res["full_add_s"] - res["bm25_add_s"]
  # Warm-up (BM25 weights, device placement, compilation for these shapes): steady state below.
  index.search_rows(questions, args.k, "hybrid")
  dense_hits, res["dense_query_s"] = _timed(index.search_rows, questions, args.k, "dense")
  _, res["hybrid_query_s"] = _timed(index.search_rows, questions, args.k, "hybrid")

  # Exact top-k alone on the same embeddings: JAX (`dense.search`) against NumPy.
  embeddings = index.embeddings
  query_emb, res["dense_query_encode_s"] = _timed(
      lambda: dense.encode(encoder, questions, batch_size=args.batch_size).embeddings)
  device_index = dense.place_index(embeddings)
  dense.search(device_index, query_emb, args.k)  # compile the query shapes used below
  dense.search(device_index, query_emb[:1], args.k)
  (_, jax_rows), res["jax_topk_s"] = _timed(dense.search, device_index, query_emb, args.k)
  np_rows, res["numpy_topk_s"] = _timed(numpy_top_k, query_emb, embeddings, args.k)
  single = query_emb[:100]
  _, t_jax1 = _timed(lambda: [dense.search(device_index, q[None], args.k) for q in single])
  _, t_np1 = _timed(lambda: [numpy_top_k(q[None], embeddings, args.k) for q in single])
  res["jax_topk_single_ms"] = 1000 * t_jax1 / len(single)
  res["numpy_topk_single_ms"] = 1000 * t_np1 / len(single)
  res["jax_numpy_same_ids"] = float(np.mean(jax_rows == np_rows))

  # Encoder alone on a sample: JAX against sentence-transformers (PyTorch).
  texts = [c.text for c in index.chunks[:args.torch_sample]]
  if texts:
    from sentence_transformers import SentenceTransformer
    from ftjax.checkpoints import resolve
    model = SentenceTransformer(str(resolve("all-minilm-l6-v2")), device="cpu")
    model.encode(texts[:args.batch_size], batch_size=args.batch_size)  # warm-up
    dense.encode(encoder, texts, batch_size=args.batch_size)
    _, res["encode_sample_torch_s"] = _timed(model.encode, texts, batch_size=args.batch_size)
    _, res["encode_sample_jax_s"] = _timed(dense.encode, encoder, texts,
                                           batch_size=args.batch_size)
    res["encode_sample"] = len(texts)

  def doc_ids(rows):
    return [[index.chunks[r].doc_id for r in row if r >= 0] for row in rows]
  res["recall@5"] = {"bm25": metrics.recall_at_k(doc_ids(bm25_hits.rows), gold, 5),
                     "dense": metrics.recall_at_k(doc_ids(dense_hits.rows), gold, 5)}

  # Update: replace 100 documents (only they are chunked and encoded), then search again.
  changed = [Document(d.doc_id, d.text.replace(".", ";", 1)) for d in documents[:100]]
  report, res["update_replace_100_s"] = _timed(index.replace, changed)
  res["update_chunks_encoded"] = report.chunks_added
  _, res["update_first_search_s"] = _timed(index.search, questions[:1], args.k, "hybrid")
  tmp.cleanup()

  record["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1))
  print(table(record))
  print(f"wrote {out}")


def table(record: dict) -> str:
  r, a = record["results"], record["args"]
  n, q, k = r["passages"], a["num_queries"], a["k"]
  rate = lambda count, seconds: f"{count / seconds:,.0f}"
  rows = [
      ("BM25 index (chunk + bm25s terms + weights)", f"{r['bm25_index_s']:.1f} s",
       f"{rate(n, r['bm25_index_s'])} passages/s"),
      ("BM25 + dense index (+ JAX MiniLM embeddings)", f"{r['full_add_s']:.0f} s",
       f"{rate(n, r['full_add_s'])} passages/s"),
  ]
  if "encode_sample" in r:
    rows.append((f"  encoder alone, {r['encode_sample']} passages: JAX / PyTorch",
                 f"{r['encode_sample_jax_s']:.1f} s / {r['encode_sample_torch_s']:.1f} s",
                 f"JAX {r['encode_sample_torch_s'] / r['encode_sample_jax_s']:.2f}x"))
  rows += [
      (f"BM25 queries ({q}, top-{k})", f"{r['bm25_query_s']:.2f} s",
       f"{rate(q, r['bm25_query_s'])} queries/s"),
      (f"Dense queries ({q}, encode + exact top-{k})", f"{r['dense_query_s']:.2f} s",
       f"{rate(q, r['dense_query_s'])} queries/s"),
      ("  exact top-k alone, batches of 256: JAX / NumPy",
       f"{r['jax_topk_s']:.2f} s / {r['numpy_topk_s']:.2f} s",
       f"JAX {r['numpy_topk_s'] / r['jax_topk_s']:.2f}x"),
      ("  exact top-k alone, one query: JAX / NumPy",
       f"{r['jax_topk_single_ms']:.1f} ms / {r['numpy_topk_single_ms']:.1f} ms",
       f"JAX {r['numpy_topk_single_ms'] / r['jax_topk_single_ms']:.2f}x"),
      (f"Hybrid queries ({q}, RRF of top-50 BM25 + dense)", f"{r['hybrid_query_s']:.2f} s",
       f"{rate(q, r['hybrid_query_s'])} queries/s"),
      (f"Update: replace 100 documents ({r['update_chunks_encoded']} chunks encoded)",
       f"{r['update_replace_100_s']:.1f} s", ""),
      ("  first search after it (BM25 weights recomputed)", f"{r['update_first_search_s']:.1f} s",
       ""),
  ]
  lines = ["| Step | Time | Throughput / ratio |", "|---|---|---|"]
  lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
  lines.append(f"\n{n:,} passages; recall@5 BM25 {r['recall@5']['bm25']:.3f}, dense "
               f"{r['recall@5']['dense']:.3f}; JAX and NumPy top-{k} ids agree on "
               f"{100 * r['jax_numpy_same_ids']:.2f}% of slots")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
