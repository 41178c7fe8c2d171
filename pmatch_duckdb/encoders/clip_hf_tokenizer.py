"""open_clip's ``HFTokenizer`` (a Hugging Face fast tokenizer) without torch or transformers.

CLIP models whose text tokenizer is a Hugging Face tokenizer (``text_cfg.hf_tokenizer_name`` in the
open_clip config: SigLIP, SigLIP2, CLIPA, ...) are exported with the fast tokenizer's backend serialised
as a ``tokenizers`` JSON (``tokenizer.json``), read here with the ``tokenizers`` package (a Rust wheel).
It gives exactly the ids ``open_clip.tokenizer.HFTokenizer`` gives (the exporter checks this on accents,
Thai, Arabic, Hindi, combining marks, emoji, CJK and text longer than the context, and
tests/test_openclip.py on more):

- cleaning: open_clip's clean function by name (``whitespace`` - HFTokenizer's default - ``lower`` or
  ``canonicalize``, the SigLIP models' choice), :func:`~.clip_tokenizer.clean_text`;
- encoding with the tokenizer's own special tokens (e.g. the ``</s>`` SigLIP's T5 tokenizer appends),
  truncated to ``context_length`` and padded to it with the tokenizer's pad id on its padding side,
  as ``tokenizer(texts, max_length=context_length, padding="max_length", truncation=True)`` does:
  the exporter writes that truncation and padding into the JSON, and they are checked here on load;
- ``strip_sep_token`` (CLIPA): every separator id is then replaced by 0, as open_clip does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelIntegrityError
from .clip_tokenizer import CLEAN_MODES, clean_text

TYPE = "hf-tokenizers-json"
FILE = "tokenizer.json"


class HFJsonTokenizer:
    """Texts -> ``int64[n, context_length]`` token ids, identical to open_clip's ``HFTokenizer``."""

    def __init__(self, path: str | Path, *, context_length: int, pad_id: int, clean: str = "whitespace",
                 strip_sep_token: bool = False, sep_id: int | None = None,
                 split_special_tokens: bool = False) -> None:
        from tokenizers import Tokenizer

        if clean not in CLEAN_MODES:
            raise ValueError(f"unknown CLIP text clean mode {clean!r}; known: {', '.join(CLEAN_MODES)}")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self.clean = clean
        self.strip_sep_token = bool(strip_sep_token)
        self.sep_id = None if sep_id is None else int(sep_id)
        # transformers sets this on the backend before every call (split_special_tokens, False by default)
        self.tokenizer.encode_special_tokens = bool(split_special_tokens)
        trunc, pad = self.tokenizer.truncation, self.tokenizer.padding
        if (not trunc or trunc.get("max_length") != self.context_length or not pad
                or pad.get("length") != self.context_length or pad.get("pad_id") != self.pad_id):
            raise ModelIntegrityError(
                f"{path}: the tokenizer must truncate and pad to {self.context_length} tokens with pad id "
                f"{self.pad_id} (truncation {trunc}, padding {pad}); re-export the bundle with: "
                f"pmatch models export-openclip --force ...")

    @classmethod
    def from_spec(cls, path: str | Path, spec: dict[str, Any]) -> HFJsonTokenizer:
        """From a CLIP manifest's ``towers.text.tokenizer`` section (``path``: its ``file``)."""
        return cls(path, context_length=int(spec["context_length"]), pad_id=int(spec["pad_id"]),
                   clean=spec.get("clean", "whitespace"), strip_sep_token=bool(spec.get("strip_sep_token")),
                   sep_id=spec.get("sep_id"), split_special_tokens=bool(spec.get("split_special_tokens")))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """``int64[len(texts), context_length]``: cleaned, encoded with special tokens, truncated and padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            # one text at a time: encode_batch's thread pool buys nothing for query-sized batches
            ids = self.tokenizer.encode(clean_text(text, self.clean), add_special_tokens=True).ids
            if len(ids) != self.context_length:  # pragma: no cover - truncation and padding are checked on load
                raise ModelIntegrityError(f"tokenizer gave {len(ids)} ids, expected {self.context_length}")
            out[row] = ids
        if self.strip_sep_token and self.sep_id is not None:
            out[out == self.sep_id] = 0
        return out
