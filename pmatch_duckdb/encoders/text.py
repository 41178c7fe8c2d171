"""Text encoder: ``tokenizers`` + ONNX Runtime. Texts in, L2-normalised float32 vectors out.

Serves the default MiniLM bundle and every bundle made by ``pmatch models export-text`` (any local
sentence-transformers / Hugging Face encoder): the manifest's ``preprocessing`` says how to tokenise
(``tokenizer.json``, max length, truncation side, pad id) and which ``prefix`` to put in front of every text
(e.g. E5's ``"query: "``), so SQL users never type it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..bundles import Bundle
from ..errors import ConfigError
from .sessions import get_session


def runtime_tokenizer(path: str | Path, pre: dict[str, Any]) -> Tokenizer:
    """The bundle's ``tokenizers`` tokenizer set up as the encoder uses it: no padding, truncation at
    ``max_tokens`` (longest first, on the manifest's ``truncation_side``)."""
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(int(pre.get("max_tokens", 256)), strategy="longest_first",
                          direction=pre.get("truncation_side", "right"))
    return tok


class TextEncoder:
    """Batched text embedding with one shared ONNX session.

    Text longer than the bundle's ``max_tokens`` (256 word pieces for MiniLM) is truncated, after the
    bundle's ``prefix`` (if any) is put in front of it.
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
        self.prefix = str(pre.get("prefix") or "")
        self.prompts = {str(k): str(v) for k, v in (pre.get("prompts") or {}).items()}
        self.tokenizer = runtime_tokenizer(bundle.file(pre.get("tokenizer", "tokenizer.json")), pre)
        self.session = get_session(bundle.file("model.onnx"), bundle.manifest["files"]["model.onnx"], threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output = bundle.manifest.get("output", "embedding")

    def prepare(self, texts: Sequence[str], prompt: str | None = None) -> list[Encoding]:
        """Tokenise ``texts`` (non-empty strings) as :meth:`encode` feeds them: the bundle's prefix, or with
        ``prompt`` the bundle's prompt of that name (e.g. ``"passage"``), then word pieces, truncated.

        Callers that order texts by :meth:`prepared_lengths` before embedding them in chunks tokenise once:
        ``encode_prepared`` takes these."""
        prefix = self.prefix
        if prompt is not None:
            if prompt not in self.prompts:
                raise ConfigError(f"model {self.bundle.name!r} has no prompt {prompt!r} "
                                  f"(prompts: {', '.join(self.prompts) or 'none'})")
            prefix = self.prompts[prompt]
        texts = [prefix + t for t in texts] if prefix else list(texts)
        return self.tokenizer.encode_batch(texts, add_special_tokens=True)

    @staticmethod
    def prepared_lengths(prepared: Sequence[Encoding]) -> np.ndarray:
        """Word pieces of each prepared text (special tokens included): the width a batch is padded to."""
        return np.fromiter((len(e.ids) for e in prepared), dtype=np.int64, count=len(prepared))

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Word pieces of each text as :meth:`encode` feeds it (prefix and special tokens included, truncated)."""
        return self.prepared_lengths(self.prepare(texts))

    def encode(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
        """Embed ``texts`` (non-empty strings) → ``float32[len(texts), dim]``.

        Each text gets the bundle's prefix, or with ``prompt`` the bundle's prompt of that name (e.g.
        ``"passage"``). Texts are sorted by token length and batched so padding stays small.
        """
        return self.encode_prepared(self.prepare(texts, prompt))

    def encode_prepared(self, encs: Sequence[Encoding]) -> np.ndarray:
        """Embed texts tokenised by :meth:`prepare` → ``float32[len(encs), dim]`` (sorted by length, batched)."""
        out = np.zeros((len(encs), self.dim), dtype=np.float32)
        if not len(encs):
            return out
        order = np.argsort(self.prepared_lengths(encs), kind="stable")
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
