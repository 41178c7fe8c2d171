"""Text encoder: ``tokenizers`` + ONNX Runtime. Texts in, L2-normalised float32 vectors out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from ..bundles import Bundle
from .sessions import get_session


class TextEncoder:
    """Batched text embedding with one shared ONNX session.

    Text longer than the bundle's ``max_tokens`` (256 word pieces for MiniLM) is truncated.
    """

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 64) -> None:
        if bundle.modality != "text":
            raise ValueError(f"bundle {bundle.name!r} is a {bundle.modality} model, not a text model")
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        pre = bundle.manifest["preprocessing"]
        self.max_tokens = int(pre.get("max_tokens", 256))
        self.pad_id = int(pre.get("pad_id", 0))
        tok = Tokenizer.from_file(str(bundle.file(pre.get("tokenizer", "tokenizer.json"))))
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        self.tokenizer = tok
        self.session = get_session(bundle.file("model.onnx"), bundle.manifest["files"]["model.onnx"], threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output = bundle.manifest.get("output", "embedding")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (non-empty strings) → ``float32[len(texts), dim]``.

        Texts are sorted by token length and batched so padding stays small.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                e = encs[i]
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = 1
                types[row, :n] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feeds = {k: v for k, v in feeds.items() if k in self.input_names}
            out[idx] = self.session.run([self.output], feeds)[0]
        return out
