"""Retrieval, search only: corpus ingestion, BM25 / dense / hybrid search over an updatable index,
retrieval metrics. RAG lives in `ftjax.arms.rag`, RAFT data in `ftjax.data.raft`, and the BERT
encoder in `ftjax.models.bert`.

  index = RetrievalIndex.create("runs/index")          # or RetrievalIndex.open(...)
  index.add(read_jsonl("docs.jsonl"))                  # replace(...), delete([...]) later
  hits = index.search(["who designed ...?"], k=5, method="hybrid", groups=["hr"])
"""

# The encoder lives in ftjax.models.bert (loaded by ftjax.checkpoints.encoder); Encoder and
# load_encoder stay importable from here.
from ftjax.checkpoints.encoder import load_encoder
from ftjax.models.bert import Encoder
from ftjax.retrieval.corpus import (Chunk, Corpus, CorpusError, Document, QAPair, chunk_documents,
                                    from_records, load_corpus, read_folder, read_jsonl, read_tfds)
from ftjax.retrieval.dense import InputTooLongError, encode
from ftjax.retrieval.hybrid import reciprocal_rank_fusion
from ftjax.retrieval.index import (EmptyIndexError, EmptyQueryError, Hits, Passage,
                                   QueryTruncatedWarning, RetrievalIndex, UpdateReport)
from ftjax.retrieval.store import IndexConfig, IndexLockedError, RetrievalIndexError
from ftjax.retrieval.metrics import evaluate, mrr, recall_at_k

__all__ = [
    "Chunk", "Corpus", "CorpusError", "Document", "EmptyIndexError", "EmptyQueryError",
    "Encoder", "Hits", "IndexConfig", "IndexLockedError", "InputTooLongError", "Passage",
    "QAPair", "QueryTruncatedWarning", "RetrievalIndex", "RetrievalIndexError", "UpdateReport",
    "chunk_documents", "encode", "evaluate", "from_records", "load_corpus", "load_encoder",
    "mrr", "read_folder", "read_jsonl", "read_tfds", "recall_at_k", "reciprocal_rank_fusion",
]
