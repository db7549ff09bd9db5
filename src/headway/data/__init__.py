"""Data: tokenizers, packing, collation into a `Batch`, batches from memory or from token shards.

    tok = ByteTokenizer()                       # or BPETokenizer.train(texts, 8192)
    for batch in batches(docs, objective, 256, 16, vocab.pad): ...   # documents held in memory
    Loader(prepared.train, prepared.weights, objective, StreamSpec(...))  # shards from `headway prepare`

`Vocab` lives in `headway.types` (also `headway.Vocab`); `headway.data.vocab` is deprecated.
"""

from headway.data.collate import collate
from headway.data.in_memory import batches
from headway.data.loader import Loader, StreamSpec
from headway.data.packing import Packer, PackStats, chunks, examples_from_documents
from headway.data.prepare import Prepared, open_prepared
from headway.data.sources import load_documents
from headway.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "BPETokenizer", "load_tokenizer", "Packer", "PackStats", "chunks",
           "examples_from_documents", "collate", "batches", "Loader", "StreamSpec", "open_prepared", "Prepared",
           "load_documents"]
