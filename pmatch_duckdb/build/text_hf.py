"""Bring your own text encoder: a local sentence-transformers / Hugging Face model folder → ONNX text bundle.

``export_text("/models/multilingual-e5-small", "my-e5", prefix="query: ")`` (or ``pmatch models export-text
--path ... --name my-e5 --prefix "query: "``) writes ``<home>/models/my-e5/`` exactly like the default text
bundle (:mod:`.text_minilm`):

- ``model.onnx``: transformer → pooling → optional Dense layers → L2 normalisation; inputs ``input_ids``,
  ``attention_mask`` (and ``token_type_ids`` for BERT), int64 with dynamic batch and sequence axes; output
  ``embedding`` float32 ``[batch, dim]``;
- ``tokenizer.json``: the model's fast tokenizer (a ``tokenizers`` JSON, read at run time without torch or
  transformers), truncating at the model's max length;
- ``manifest.json``: modality ``text``, dimension, pooling, max length, the prefix applied to every text
  and the model's named prompts, the source folder (and the sha256 of its weight files), the parity
  checks, and the sha256 of every bundle file.

What is read from the folder (local only: ``local_files_only``, ``HF_HUB_OFFLINE=1``, never
``trust_remote_code``): a sentence-transformers folder (``modules.json`` with Transformer, Pooling, Dense and
Normalize modules; ``1_Pooling/config.json`` in the old ``pooling_mode_*`` or the new ``pooling_mode`` form;
``sentence_bert_config.json``; ``config_sentence_transformers.json``'s prompts) or a plain Hugging Face
folder (``config.json``, weights, tokenizer files; mean pooling unless ``pooling=``). Weights: safetensors,
or ``pytorch_model.bin`` read by transformers with ``weights_only`` torch loading (no pickled code).
Architectures: :data:`ARCHITECTURES` (BERT, XLM-RoBERTa, RoBERTa, MPNet, DistilBERT encoders); any other is
refused with an error naming it.

After export, the ONNX graph is checked against the torch module (≤ :data:`CHECK_TOL` on the normalised
embeddings, on padded batches of several shapes) and the runtime tokenisation against the original
(transformers) tokenizer on :data:`TOKENIZER_CHECK_TEXTS` (CJK, Thai, Arabic, Cyrillic, emoji, combining
marks, text longer than the max length, ...), with the prefix applied; a mismatch fails the export and
leaves no bundle behind.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundles import check_new_bundle_name, find_bundle, sha256_file
from ..errors import ConfigError, ModelIntegrityError, ModelNotFoundError, PmatchError
from ..home import models_dir
from .common import finish_bundle, package_version, staging_dir

RECIPE = 1  # bump whenever the export changes
OPSET = 17
CHECK_TOL = 1e-4  # max |onnx - torch| allowed on the normalised embeddings
INSTALL_HINT = "pip install 'pmatch-duckdb[build]'"
RESERVED_NAMES = ("minilm-l6-v2", "efficientnet-lite0", "minilm-l6-v2-int8", "efficientnet-lite0-int8")

# config.json model_type -> (transformers model class, whether it takes token_type_ids, position-id offset:
# RoBERTa-style models number positions from padding_idx + 1, so max_position_embeddings - (pad + 1) fit)
ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "bert": ("BertModel", True, False),
    "xlm-roberta": ("XLMRobertaModel", False, True),
    "roberta": ("RobertaModel", False, True),
    "mpnet": ("MPNetModel", False, True),
    "distilbert": ("DistilBertModel", False, False),
}
POOLING_MODES = ("mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens", "weightedmean")
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken",
}
# activations a sentence-transformers Dense layer may name (anything else is refused: no imports by name)
DENSE_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_CHECK_TEXTS = (
    "red cotton dress", "Rotes Baumwollkleid, Größe 38 – spülmaschinenfest",
    "無印良品 ステンレス 保温保冷マグ 350ml", "小米 Redmi Note 13 Pro 5G 手机 256GB", "삼성 갤럭시 버즈",
    "เสื้อยืดผ้าฝ้าย สีแดง ไซส์ L", "فستان قطني أحمر مقاس ٣٨", "Ключ гаечный комбинированный 13 мм",
    "ΠΟΔΗΛΑΤΟ ΒΟΥΝΟΥ 29\" αλουμινίου", "कपास की लाल पोशाक", "Party pack 🎉🎈 x50 👩🏽‍🍳 🇩🇪",
    "cafe\u0301 de\u0301ja\u0300 vu, Ha\u0308agen-Dazs, n\u0303", "ﬁne ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and\u200bzero width",
    "Tom &amp; Jerry <b>bold</b> [SEP] <s> </s> <pad> [CLS] <mask>", "tabs\tand\nnewlines  and   spaces",
    "  leading and trailing  ", "don't WON'T it's", "x", "12345678901234567890 3.14159 1,000,000",
    "Samsung Galaxy S24 Ultra SM-S928B/DS 512GB Titanium Black " * 60,
    "超长文本" * 700,
)


class ExportError(PmatchError):
    """A local text model could not be exported (unsupported architecture, bad folder, failed check, ...)."""


@dataclass
class DenseSpec:
    """One sentence-transformers ``Dense`` module: its folder and config."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    residual: bool


@dataclass
class ModelSpec:
    """What a local model folder says about how to embed text (before anything heavy is loaded)."""

    folder: Path  # the folder given
    transformer: Path  # folder with config.json, weights and tokenizer
    model_type: str
    architecture: str  # config.json "architectures"[0] or the model class
    layout: str  # "sentence-transformers" | "huggingface"
    pooling: list[str]
    pooling_source: str  # where the pooling came from
    normalize_in_source: bool  # the source model itself ends with Normalize
    dense: list[DenseSpec] = field(default_factory=list)
    max_seq_length: int | None = None  # sentence_bert_config.json
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True


# --------------------------------------------------------------------------------------------- reading the folder

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {str(path)!r}: {e}") from None


def _pooling_from_config(cfg: dict[str, Any], path: Path) -> tuple[list[str], bool]:
    """Pooling modes (in order) and ``include_prompt`` from a ``1_Pooling/config.json`` (old or new form)."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        raise ExportError(f"{str(path)!r} names no pooling mode")
    return modes, bool(cfg.get("include_prompt", True))


def _class_name(module_type: str) -> str:
    return module_type.rsplit(".", 1)[-1]


def read_model_folder(path: str | os.PathLike[str]) -> ModelSpec:
    """Inspect a local model folder: layout, architecture, pooling, Dense/Normalize modules, prompts.

    Raises :class:`ModelNotFoundError` for a missing folder and :class:`ExportError` for anything we
    cannot export (naming what: the architecture, the module type, the pooling mode, ...).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {str(folder)!r} does not exist (export-text reads a local "
                                 f"sentence-transformers or Hugging Face model folder and never downloads one)")
    folder = folder.resolve()
    transformer = folder
    modes: list[str] = []
    include_prompt = True
    pooling_source = "default (mean): a plain Hugging Face folder"
    normalize = False
    dense: list[DenseSpec] = []
    max_seq_length = None
    lower = False
    layout = "huggingface"
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        layout = "sentence-transformers"
        modules = _read_json(modules_file)
        if not isinstance(modules, list) or not modules:
            raise ExportError(f"{str(modules_file)!r} lists no modules")
        for i, mod in enumerate(sorted(modules, key=lambda m: int(m.get("idx", 0)))):
            kind = _class_name(str(mod.get("type", "")))
            sub = (folder / str(mod.get("path", ""))).resolve()
            if folder != sub and folder not in sub.parents:
                raise ExportError(f"{str(modules_file)!r}: module path {mod.get('path')!r} leaves the model folder")
            if i == 0:
                if kind != "Transformer":
                    raise ExportError(f"the first module in {str(modules_file)!r} is {mod.get('type')!r}; "
                                      f"export-text supports sentence-transformers models that start with a "
                                      f"Transformer module")
                transformer = sub
                sbert = sub / "sentence_bert_config.json"
                if sbert.is_file():
                    sb = _read_json(sbert)
                    max_seq_length = sb.get("max_seq_length")
                    lower = bool(sb.get("do_lower_case", False))
            elif kind == "Pooling":
                if modes:
                    raise ExportError(f"{str(modules_file)!r} has more than one Pooling module")
                modes, include_prompt = _pooling_from_config(_read_json(sub / "config.json"), sub / "config.json")
                pooling_source = f"{sub.relative_to(folder).as_posix()}/config.json"
            elif kind == "Dense":
                if not modes:
                    raise ExportError(f"{str(modules_file)!r}: a Dense module before the Pooling module is not supported")
                cfg = _read_json(sub / "config.json")
                act = _class_name(str(cfg.get("activation_function") or "torch.nn.modules.linear.Identity"))
                if act not in DENSE_ACTIVATIONS:
                    raise ExportError(f"Dense module {mod.get('path')!r}: activation {cfg.get('activation_function')!r} "
                                      f"is not supported (supported: {', '.join(DENSE_ACTIVATIONS)})")
                if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                    raise ExportError(f"Dense module {mod.get('path')!r} reads {cfg['module_input_name']!r}, "
                                      f"not the sentence embedding")
                dense.append(DenseSpec(sub, int(cfg["in_features"]), int(cfg["out_features"]),
                                       bool(cfg.get("bias", True)), act, bool(cfg.get("use_residual", False))))
            elif kind == "Normalize":
                normalize = True
            else:
                raise ExportError(f"{str(modules_file)!r}: module {mod.get('type')!r} is not supported by "
                                  f"export-text (supported: Transformer, Pooling, Dense, Normalize)")
        if not modes:
            pooling_source = "default (mean): modules.json has no Pooling module"
    modes = modes or ["mean"]
    cfg_file = transformer / "config.json"
    if not cfg_file.is_file():
        raise ExportError(f"no config.json in {str(transformer)!r}: not a Hugging Face model folder")
    config = _read_json(cfg_file)
    model_type = str(config.get("model_type", ""))
    archs = config.get("architectures") or []
    arch = str(archs[0]) if archs else model_type or "unknown"
    if config.get("auto_map"):
        raise ExportError(f"{str(transformer)!r}: architecture {arch!r} needs custom code from the model folder "
                          f"(auto_map); export-text never runs remote or folder code. Supported: "
                          f"{', '.join(ARCHITECTURES)}")
    if model_type not in ARCHITECTURES:
        raise ExportError(f"architecture {arch!r} (model_type {model_type!r}) is not supported by export-text; "
                          f"supported encoder types: {', '.join(ARCHITECTURES)} (BERT, XLM-RoBERTa, RoBERTa, "
                          f"MPNet, DistilBERT)")
    prompts: dict[str, str] = {}
    default_prompt = None
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        sc = _read_json(st_cfg)
        prompts = {str(k): str(v) for k, v in (sc.get("prompts") or {}).items() if v}
        default_prompt = sc.get("default_prompt_name") or None
    return ModelSpec(folder=folder, transformer=transformer, model_type=model_type, architecture=arch,
                     layout=layout, pooling=modes, pooling_source=pooling_source, normalize_in_source=normalize,
                     dense=dense, max_seq_length=None if max_seq_length is None else int(max_seq_length),
                     do_lower_case=lower, prompts=prompts, default_prompt_name=default_prompt,
                     include_prompt=include_prompt)


def parse_pooling(pooling: str | list[str]) -> list[str]:
    """``"mean"``, ``"cls+max"`` or a list → validated pooling modes (``last``/``lasttoken`` alike)."""
    modes = pooling.replace(",", "+").split("+") if isinstance(pooling, str) else list(pooling)
    out = []
    for m in modes:
        m = {"last": "lasttoken", "last_token": "lasttoken", "mean_tokens": "mean", "cls_token": "cls"}.get(
            m.strip().lower(), m.strip().lower())
        if m not in POOLING_MODES:
            raise ConfigError(f"unknown pooling {m!r}; known: {', '.join(POOLING_MODES)}")
        out.append(m)
    if not out:
        raise ConfigError("no pooling mode given")
    return out


# --------------------------------------------------------------------------------------------- loading

def _state_dict(folder: Path) -> dict[str, Any]:
    """Weights of a Dense module folder: safetensors, or a state dict read with ``weights_only=True``."""
    import torch

    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st), device="cpu")
    binf = folder / "pytorch_model.bin"
    if binf.is_file():
        try:
            return torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors for anything but plain tensors
            raise ExportError(f"cannot read {str(binf)!r} with torch.load(weights_only=True): {e}") from None
    raise ExportError(f"no weights (model.safetensors or pytorch_model.bin) in {str(folder)!r}")


def _weight_files(folder: Path) -> list[Path]:
    found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    found += sorted(p for p in folder.glob("model-*.safetensors"))  # sharded
    found += sorted(p for p in folder.glob("pytorch_model-*.bin"))
    return found


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's transformers tokenizer (fast), read from the transformer folder only."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(spec.transformer), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # OSError, ValueError, ... for folders without usable tokenizer files
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot load the tokenizer in {str(spec.transformer)!r}: {detail}") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise ExportError(f"the tokenizer in {str(spec.transformer)!r} ({type(tok).__name__}) is a slow (Python) "
                          f"tokenizer with no fast version; export-text needs a tokenizers-backed tokenizer "
                          f"(tokenizer.json, or files transformers converts to one)")
    return tok


def load_transformer(spec: ModelSpec) -> Any:
    """The transformers encoder (eager attention, eval mode), from local files only."""
    import transformers

    cls_name = ARCHITECTURES[spec.model_type][0]
    cls = getattr(transformers, cls_name)
    if not _weight_files(spec.transformer):
        raise ExportError(f"no weights ({', '.join(WEIGHT_FILES)}) in {str(spec.transformer)!r}")
    try:
        # the pooler (BERT's tanh head over [CLS]) is never part of the exported graph: not built
        extra = {} if spec.model_type == "distilbert" else {"add_pooling_layer": False}
        model = cls.from_pretrained(str(spec.transformer), local_files_only=True, trust_remote_code=False,
                                    attn_implementation="eager", **extra)
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot load {cls_name} from {str(spec.transformer)!r}: {detail}") from None
    return model.eval()


def max_positions(config: Any, model_type: str) -> int:
    """How many tokens the position embeddings allow (RoBERTa-style models start at padding_idx + 1)."""
    n = int(getattr(config, "max_position_embeddings", 512))
    if ARCHITECTURES[model_type][2]:
        n -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return n


def resolve_max_length(spec: ModelSpec, tokenizer: Any, config: Any, override: int | None) -> tuple[int, str]:
    """The max length in tokens (special tokens included) and where it came from."""
    limit = max_positions(config, spec.model_type)
    if override is not None:
        if override < 2 or override > limit:
            raise ConfigError(f"max length {override} is outside 2..{limit} (the model's position embeddings)")
        return int(override), "--max-length"
    if spec.max_seq_length:
        return min(spec.max_seq_length, limit), "sentence_bert_config.json max_seq_length"
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return min(tml, limit), "tokenizer_config.json model_max_length"
    return limit, "config.json max_position_embeddings"


def build_torch_module(spec: ModelSpec, transformer: Any, pooling: list[str]) -> Any:
    """transformer → pooling → Dense layers → L2 normalisation, as one torch module (the exported graph)."""
    import torch

    uses_types = ARCHITECTURES[spec.model_type][1]
    dense_layers = []
    for d in spec.dense:
        lin = torch.nn.Linear(d.in_features, d.out_features, bias=d.bias)
        sd = _state_dict(d.path)
        try:
            lin.load_state_dict({k[len("linear."):]: v for k, v in sd.items() if k.startswith("linear.")}, strict=True)
        except RuntimeError as e:
            raise ExportError(f"Dense module {str(d.path)!r}: weights do not fit its config: "
                              f"{str(e).splitlines()[0]}") from None
        res = None
        if d.residual and d.in_features != d.out_features:
            res = torch.nn.Linear(d.in_features, d.out_features, bias=False)
            res.load_state_dict({"weight": sd["residual.weight"]})
        dense_layers.append((lin, getattr(torch.nn, d.activation)(), d.residual, res))

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformer
            self.dense = torch.nn.ModuleList([torch.nn.ModuleList([lin, act] + ([res] if res is not None else []))
                                              for lin, act, _, res in dense_layers])
            self.residual = [r for _, _, r, _ in dense_layers]

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001, ANN201
            kw = {"token_type_ids": token_type_ids} if uses_types else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            pooled = torch.cat([pool(mode, hidden, attention_mask) for mode in pooling], dim=-1)
            for mods, residual in zip(self.dense, self.residual, strict=True):
                out = mods[1](mods[0](pooled))
                if residual:
                    out = out + (mods[2](pooled) if len(mods) > 2 else pooled)
                pooled = out
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return PooledEncoder().eval()


def pool(mode: str, hidden: Any, attention_mask: Any) -> Any:
    """sentence-transformers' pooling of right-padded token embeddings (what its Pooling module computes)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total = (hidden * mask).sum(1)
        n = mask.sum(1).clamp(min=1e-9)
        return total / (n if mode == "mean" else torch.sqrt(n))
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode == "weightedmean":
        weights = torch.cumsum(torch.ones_like(attention_mask), dim=1).unsqueeze(-1).to(hidden.dtype) * mask
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "lasttoken":
        last = (attention_mask.sum(1) - 1).clamp(min=0).to(torch.int64)
        idx = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return torch.gather(hidden * mask, 1, idx).squeeze(1)
    raise ConfigError(f"unknown pooling {mode!r}")


# --------------------------------------------------------------------------------------------- export

def write_tokenizer(hf: Any, dest: Path, max_length: int, lower: bool) -> dict[str, Any]:
    """The fast tokenizer's backend as a ``tokenizers`` JSON, truncating at ``max_length``, no padding."""
    from tokenizers import Tokenizer, normalizers

    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    if lower:  # sentence-transformers' do_lower_case: a Lowercase normaliser in front (as it does itself)
        norm = backend.normalizer
        parts = [normalizers.Lowercase()] + ([norm] if norm is not None else [])
        backend.normalizer = normalizers.Sequence(parts)
    backend.no_padding()
    backend.enable_truncation(max_length=max_length, stride=0, strategy="longest_first",
                              direction=hf.truncation_side)
    backend.save(str(dest))
    return {"tokenizer": dest.name, "max_tokens": max_length, "truncation": "longest_first",
            "truncation_side": hf.truncation_side, "pad_id": int(hf.pad_token_id if hf.pad_token_id is not None else 0),
            "lowercase": bool(lower), "class": type(hf).__name__,
            "vocab_size": backend.get_vocab_size(with_added_tokens=True)}


def check_tokenizer(hf: Any, bundle_tokenizer: Path, pre: dict[str, Any], texts: list[str]) -> int:
    """Compare the runtime tokenisation (the bundle's JSON via :class:`TextEncoder`'s rules) with ``hf``.

    ``hf`` is called as sentence-transformers calls it (``truncation=True, max_length=...``) on the same
    prefixed text. Returns how many texts were compared; raises :class:`ExportError` on the first mismatch.
    """
    from ..encoders.text import runtime_tokenizer

    ours = runtime_tokenizer(bundle_tokenizer, pre)
    prefix = pre.get("prefix", "")
    lower = pre.get("lowercase", False)
    for text in texts:
        full = prefix + text
        got = ours.encode(full, add_special_tokens=True)
        want = hf(full.lower() if lower else full, truncation=True, max_length=pre["max_tokens"])
        w_ids = list(want["input_ids"])
        w_types = list(want.get("token_type_ids") or [0] * len(w_ids))
        if got.ids != w_ids or list(got.type_ids) != w_types:
            raise ExportError(f"the runtime tokenizer disagrees with the model's own tokenizer on {text[:60]!r}: "
                              f"{got.ids[:40]} != {w_ids[:40]}")
    return len(texts)


def _check_onnx(path: Path, module: Any, feeds: list[dict[str, Any]]) -> float:
    """Max |onnx - torch| over the batches ``feeds``; raises past :data:`CHECK_TOL`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    worst = 0.0
    for feed in feeds:
        got = sess.run(["embedding"], {k: v for k, v in feed.items() if k in names})[0]
        with torch.no_grad():
            want = module(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
        diff = float(np.abs(got - want).max())
        if not diff <= CHECK_TOL:  # NaN fails too
            raise ExportError(f"ONNX and torch disagree by {diff:.2e} (> {CHECK_TOL}) on a batch of shape "
                              f"{feed['input_ids'].shape}")
        worst = max(worst, diff)
    return worst


def _batches(tokenizer_path: Path, pre: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
    """Padded int64 feeds (as the runtime encoder builds them) for the ONNX check: several shapes."""
    import numpy as np

    from ..encoders.text import runtime_tokenizer

    tok = runtime_tokenizer(tokenizer_path, pre)
    encs = [tok.encode(pre.get("prefix", "") + t) for t in texts]

    def feed(group: list[Any]) -> dict[str, Any]:
        width = max(len(e.ids) for e in group)
        ids = np.full((len(group), width), pre["pad_id"], dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for r, e in enumerate(group):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
            types[r, :len(e.ids)] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    short = [e for e in encs if len(e.ids) < pre["max_tokens"]]
    long = [e for e in encs if len(e.ids) >= pre["max_tokens"]]
    # short texts padded to each other; one truncated text beside a short one (padding up to the max
    # length); a single text; several: four shapes, the max length used once (base-size models are slow)
    return [feed(short[:8]), feed(long[:1] + short[8:9]), feed(short[8:9]), feed(short[9:])]


def build(bundle_dir: Path, name: str, spec: ModelSpec, *, pooling: list[str] | None = None,
          prefix: str | None = None, prompts: dict[str, str] | None = None, max_length: int | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``spec``'s model into ``bundle_dir`` (model.onnx, tokenizer.json, manifest.json) and check it."""
    import torch

    from .common import export_onnx

    modes = parse_pooling(pooling) if pooling else spec.pooling
    for m in modes:
        if m not in POOLING_MODES:
            raise ExportError(f"pooling mode {m!r} of {str(spec.folder)!r} is not supported "
                              f"(supported: {', '.join(POOLING_MODES)})")
    all_prompts = {**spec.prompts, **(prompts or {})}
    if prefix is None:
        prefix = all_prompts.get(spec.default_prompt_name, "") if spec.default_prompt_name else ""
        prefix_source = f"default prompt {spec.default_prompt_name!r}" if prefix else "none"
    else:
        prefix_source = "--prefix"
    if prefix and not spec.include_prompt:
        raise ExportError(f"{str(spec.folder)!r} pools without the prompt tokens (include_prompt: false), "
                          f"which export-text does not reproduce; export without a prefix")
    hf_tok = load_tokenizer(spec)
    log(f"{name}: loading {spec.architecture} from {spec.transformer} ...")
    transformer = load_transformer(spec)
    config = transformer.config
    n_max, max_source = resolve_max_length(spec, hf_tok, config, max_length)
    vocab = int(config.vocab_size)

    pre = write_tokenizer(hf_tok, bundle_dir / "tokenizer.json", n_max, spec.do_lower_case)
    top_id = max(hf_tok.backend_tokenizer.get_vocab(with_added_tokens=True).values())
    if top_id >= vocab:
        raise ExportError(f"the tokenizer in {str(spec.transformer)!r} has token ids up to {top_id}, past the "
                          f"model's vocabulary ({vocab}): is it the tokenizer of these weights?")
    pre.update(prefix=prefix, prompts=all_prompts)
    texts = list(TOKENIZER_CHECK_TEXTS)
    n_checked = check_tokenizer(hf_tok, bundle_dir / "tokenizer.json", pre, texts)
    if all_prompts:  # every named prompt tokenises as the original too
        for p in all_prompts.values():
            check_tokenizer(hf_tok, bundle_dir / "tokenizer.json", {**pre, "prefix": p}, texts[:6])

    module = build_torch_module(spec, transformer, modes)
    uses_types = ARCHITECTURES[spec.model_type][1]
    feeds = _batches(bundle_dir / "tokenizer.json", pre, texts)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
    sample = feeds[1]
    args = tuple(torch.from_numpy(sample[k]) for k in names)
    axes = {k: {0: "batch", 1: "seq"} for k in names}
    axes["embedding"] = {0: "batch"}
    log(f"{name}: exporting to ONNX ({sum(p.numel() for p in module.parameters()) / 1e6:.1f} M parameters) ...")
    import warnings

    with warnings.catch_warnings():
        # tracer warnings about shape-dependent Python in transformers: the graph is checked right after
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        export_onnx(module, args, bundle_dir / "model.onnx", names, ["embedding"], axes, opset=OPSET)
    log(f"{name}: checking ONNX against torch ...")
    diff = _check_onnx(bundle_dir / "model.onnx", module, [{k: f[k] for k in names} for f in feeds])
    with torch.no_grad():
        dim = int(module(*args).shape[-1])
    weights = _weight_files(spec.transformer) + [f for d in spec.dense for f in _weight_files(d.path)]
    return finish_bundle(bundle_dir, {
        "name": name,
        "recipe": RECIPE,
        "modality": "text",
        "dim": dim,
        "kind": "onnx-text-encoder",
        "inputs": {k: "int64[batch,seq]" for k in names},
        "output": "embedding",
        "normalized": True,
        "preprocessing": pre,
        "pooling": "+".join(modes),
        "pooling_source": "--pooling" if pooling else spec.pooling_source,
        "dense_layers": [{"in": d.in_features, "out": d.out_features, "activation": d.activation,
                          "residual": d.residual} for d in spec.dense],
        "max_length_source": max_source,
        "prefix_source": prefix_source,
        "source": {"package": None, "version": None, "folder": str(spec.folder), "layout": spec.layout,
                   "model_type": spec.model_type, "architecture": spec.architecture,
                   "normalize_module": spec.normalize_in_source,
                   "weights": {str(p.relative_to(spec.folder)): sha256_file(p) for p in weights}},
        "exporter": {"torch": package_version("torch"), "transformers": package_version("transformers"),
                     "onnx": package_version("onnx"), "opset": OPSET,
                     "check": {"max_abs_diff": diff, "tolerance": CHECK_TOL, "tokenizer_texts": n_checked}},
    })


def export_text(path: str | os.PathLike[str], name: str, home: str | os.PathLike[str] | None = None, *,
                pooling: str | list[str] | None = None, prefix: str | None = None,
                prompts: dict[str, str] | None = None, max_length: int | None = None, force: bool = False,
                log: Callable[[str], None] = print) -> Path:
    """Export the local text model folder ``path`` to the text bundle ``<home>/models/<name>``; return its path.

    ``pooling``: override the folder's pooling (``mean``, ``cls``, ``lasttoken``, ``max``,
    ``mean_sqrt_len_tokens``, ``weightedmean``, or several joined by ``+``); default: the sentence-transformers
    Pooling config, else mean. ``prefix``: text put in front of every text the bundle embeds (e.g.
    ``"query: "`` for E5 models, which recommend it for symmetric tasks such as matching); default: the
    model's ``default_prompt_name`` prompt, else none. ``prompts``: named prefixes recorded beside the
    model's own (usable from Python: ``TextEncoder.encode(texts, prompt=NAME)``). ``max_length``: truncate at
    this many tokens instead of the model's max length. An existing bundle is replaced only with ``force``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may reach a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    check_new_bundle_name(name)
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is the name of a default model; choose another name")
    if pooling is not None:
        pooling = parse_pooling(pooling)
    if prompts:
        bad = [k for k in prompts if not re.fullmatch(r"[A-Za-z0-9_.-]+", k)]
        if bad:
            raise ConfigError(f"invalid prompt names {bad}")
    final = models_dir(home) / name
    if final.exists() and not force:
        raise ConfigError(f"a model bundle named {name!r} already exists in {final.parent}; "
                          f"pass force=True (--force) to replace it")
    spec = read_model_folder(path)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ExportError(f"exporting a text model needs torch and transformers ({e}); install them with: "
                          f"{INSTALL_HINT}") from None
    from ..console import quiet_export

    with staging_dir(final) as tmp, quiet_export():  # transformers' load reports and bars, tracer warnings
        build(tmp, name, spec, pooling=pooling, prefix=prefix, prompts=prompts, max_length=max_length, log=log)
    bundle = find_bundle(name, home)
    try:
        bundle.verify()
    except ModelIntegrityError as e:  # pragma: no cover - the bundle was just written
        raise ExportError(str(e)) from None
    log(f"{name}: text bundle (dim {bundle.dim}, pooling {bundle.manifest['pooling']}, max "
        f"{bundle.manifest['preprocessing']['max_tokens']} tokens) written to {bundle.path}")
    return bundle.path
