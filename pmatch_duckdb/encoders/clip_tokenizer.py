"""OpenCLIP's ``SimpleTokenizer`` (byte-level BPE over ``bpe_simple_vocab_16e6.txt.gz``) without torch.

A port of ``open_clip.tokenizer.SimpleTokenizer`` (originally OpenAI CLIP, MIT License, Copyright (c) 2021
OpenAI) that returns numpy arrays, so CLIP text can be tokenized at query time with neither torch nor
open_clip installed. It gives exactly the ids open_clip's tokenizer gives (tests/test_openclip.py checks
this on accents, emoji, CJK, HTML entities, mojibake and text longer than the context):

- cleaning: ``ftfy.fix_text`` + HTML unescaping twice, then one of the open_clip clean modes
  (``lower``: whitespace collapsed and lower-cased, the default; ``whitespace``; ``canonicalize``:
  punctuation removed as well) - which is why ``ftfy`` and ``regex`` are runtime dependencies;
- ``<start_of_text>`` + BPE ids + ``<end_of_text>``, zero-padded to ``context_length`` (77);
- longer text is truncated to ``context_length`` tokens and the last one replaced by ``<end_of_text>``.

The vocabulary file is copied into each CLIP bundle by the exporter and hashed in its manifest.
"""

from __future__ import annotations

import gzip
import html
import string
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

SOT = "<start_of_text>"
EOT = "<end_of_text>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
_CACHE_LIMIT = 200_000  # BPE results cached per word; cleared when it grows past this


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character table of GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word, word[1:], strict=False)}


def basic_clean(text: str) -> str:
    """ftfy mojibake/unicode repair, HTML entities unescaped (twice, as open_clip does), stripped."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Runs of whitespace collapsed to one space."""
    return " ".join(text.split()).strip()


_PUNCT = str.maketrans("", "", string.punctuation)


def canonicalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (big_vision / open_clip ``canonicalize``)."""
    text = text.replace("_", " ").translate(_PUNCT).lower()
    return " ".join(text.split()).strip()


def clean_text(text: str, mode: str) -> str:
    """open_clip's clean functions by name."""
    if mode == "lower":
        return whitespace_clean(basic_clean(text)).lower()
    if mode == "whitespace":
        return whitespace_clean(basic_clean(text))
    if mode == "canonicalize":
        return canonicalize_text(basic_clean(text))
    raise ValueError(f"unknown CLIP text clean mode {mode!r}; known: {', '.join(CLEAN_MODES)}")


class ClipTokenizer:
    """Texts -> ``int64[n, context_length]`` token ids, identical to open_clip's ``SimpleTokenizer``."""

    def __init__(self, bpe_path: str | Path, context_length: int = 77, clean: str = "lower") -> None:
        import regex

        if clean not in CLEAN_MODES:
            raise ValueError(f"unknown CLIP text clean mode {clean!r}; known: {', '.join(CLEAN_MODES)}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.byte_encoder = bytes_to_unicode()
        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend([SOT, EOT])
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, ...], int] = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)
        self.clean = clean
        self.pattern = regex.compile(
            rf"{SOT}|{EOT}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, str] = {SOT: SOT, EOT: EOT}
        self._lock = threading.Lock()

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one pre-token (byte-encoded)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        with self._lock:
            if len(self._cache) > _CACHE_LIMIT:
                self._cache = {SOT: SOT, EOT: EOT}
            self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text (cleaned), without start/end tokens or truncation."""
        ids: list[int] = []
        for tok in self.pattern.findall(clean_text(text, self.clean)):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(tok).split(" "))
        return ids

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """``int64[len(texts), context_length]``: start + ids + end, truncated (end kept) and zero-padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            out[row, :len(ids)] = ids
        return out
