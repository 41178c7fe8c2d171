"""Bring your own CLIP: export an OpenCLIP checkpoint on disk to one ``clip`` bundle (needs the ``clip`` extra).

``export_openclip("ViT-B-32", "/path/to/open_clip_pytorch_model.bin", "my-clip")`` (or
``pmatch models export-openclip --arch ViT-B-32 --weights ... --name my-clip``) writes
``<home>/models/my-clip/`` with

- ``text.onnx``: token ids ``int64[batch, context_length]`` -> ``embedding float32[batch, dim]``
  (``model.encode_text(ids, normalize=True)``);
- ``image.onnx``: pixels ``float32[batch, 3, H, W]`` -> ``embedding float32[batch, dim]``
  (``model.encode_image(pixels, normalize=True)``);
- the text tokenizer, read at run time without torch or open_clip: ``bpe_simple_vocab_16e6.txt.gz``
  (open_clip's BPE vocabulary, :mod:`pmatch_duckdb.encoders.clip_tokenizer`) for OpenAI/LAION-style
  models, or ``tokenizer.json`` (a ``tokenizers`` JSON, :mod:`pmatch_duckdb.encoders.clip_hf_tokenizer`)
  for architectures with a Hugging Face tokenizer (``text_cfg.hf_tokenizer_name``: SigLIP, SigLIP2,
  CLIPA, ...);
- ``manifest.json``: modality ``clip``, the shared dimension, per tower the file, input, output and the
  tokenizer (type, context length, clean mode, pad/end ids, ...) / image preprocessing (size, resize
  mode, interpolation, mean/std from the model's own ``preprocess_cfg``), the architecture config, the
  weights file and its sha256, and the sha256 of every bundle file.

Why one bundle, not two: both towers come from one checkpoint and are only meaningful together (one
shared space), and the SQL functions select a model by one name for text and image alike.

Nothing is downloaded, ever: the architecture must be one of open_clip's built-in configs (or a local
``open_clip_config.json`` folder), the weights a local file (``.safetensors`` read with safetensors;
``.bin``/``.pt``/``.pth`` with ``torch.load(weights_only=True)`` only - no pickled code), and
``pretrained_text``/``pretrained_image`` tower downloads are disabled (``HF_HUB_OFFLINE=1``).

A Hugging Face tokenizer is read from a local folder only (:func:`resolve_tokenizer`: ``tokenizer=`` /
``--tokenizer``, else the snapshot folder holding ``open_clip_config.json`` and the tokenizer files, else
``hf_tokenizer_name`` when it is a local folder; otherwise a clear error saying what to pass), loaded as
open_clip loads it (``open_clip.tokenizer.HFTokenizer``: transformers' ``AutoTokenizer``, with the
config's ``tokenizer_kwargs``), and written as its fast tokenizer's backend with open_clip's truncation
and padding to ``context_length``; slow-only tokenizers are refused.

A *text tower* that is a Hugging Face transformer (``text_cfg.hf_model_name``: the multilingual
``xlm-roberta-base-ViT-B-32`` / ``xlm-roberta-large-ViT-H-14`` family; RoBERTa and BERT towers too) is
built by open_clip's ``HFTextEncoder`` from a local folder (:func:`resolve_hf_text_dir`: ``hf_text_dir=``
/ ``--hf-text-dir``, else the folder named ``hf_model_name`` inside the checkpoint's folder): its
``config.json`` only (random init, then the checkpoint's weights), passed to ``open_clip.create_model``
as ``text_cfg.hf_model_name``. ``text.onnx`` then holds the transformer, open_clip's pooler
(``hf_pooler_type``) and projection (``hf_proj_type``) and the L2 normalisation; the folder's tokenizer
(XLM-R's sentencepiece Unigram, as a fast tokenizer) goes the Hugging Face tokenizer way above.
Encoder-decoder towers (mT5, NLLB) are refused. Image towers may be open_clip's own or timm's (SigLIP's),
created without pretrained weights.

After export, both ONNX graphs are checked against the torch model and the runtime tokenizer against
open_clip's own (``SimpleTokenizer`` or ``HFTokenizer``) on :data:`TOKENIZER_CHECK_TEXTS`; a mismatch
fails the export.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundles import check_new_bundle_name, find_bundle, sha256_file
from ..encoders.clip_hf_tokenizer import FILE as HF_JSON_FILE
from ..encoders.clip_hf_tokenizer import TYPE as HF_JSON
from ..errors import ConfigError, ModelIntegrityError, ModelNotFoundError, PmatchError
from ..home import models_dir
from .common import finish_bundle, package_version, staging_dir

RECIPE = 1  # bump whenever the export changes
MODALITY = "clip"
OPSET = 17
CHECK_TOL = 1e-4  # max |onnx - torch| allowed on the normalised embeddings
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# preferred checkpoint names when --weights is a folder (a local Hugging Face snapshot), as open_clip
PREFERRED_CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                         "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                         "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")  # the size is the model's
RESERVED_NAMES = ("minilm-l6-v2", "efficientnet-lite0")
TOKENIZER_CHECK_TEXTS = (
    "a photo of a red dress", "Crème brûlée – 6 ramekins", "無印良品 マグ 350ml", "party 🎉 x50",
    "Tom &amp; Jerry", "don't STOP", "Ключ гаечный 13 мм", "tabs\tand\nnewlines  and_under_scores",
    "literal </s> <pad> [SEP] [CLS] <unk> <start_of_text>", "!!!", " ".join(["very long text"] * 40),
    "ชุดเดรสสีแดง ผ้าฝ้าย 100%", "فستان أحمر، قطن ١٠٠٪", "e\u0301te\u0301 cafe\u0301 n\u0303 Z\u0351\u0361a\u0310",
    "गाय का दूध 1 लीटर", "빨간 드레스 👨\u200d👩\u200d👧\u200d👦 🇵🇱 1️⃣", "红色连衣裙，棉质（M码）",
)
# files that make a folder a Hugging Face tokenizer folder (AutoTokenizer.from_pretrained reads it)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model", "vocab.txt", "vocab.json")
HF_TOKENIZER_OPTIONS = ("clean", "strip_sep_token")  # HFTokenizer's own options; the rest go to AutoTokenizer
# Hugging Face text towers exported (config.json's model_type; encoder-only ones open_clip knows)
HF_TEXT_TYPES = ("xlm-roberta", "roberta", "bert")
HF_POSITION_IDS = "text.transformer.embeddings.position_ids"

INSTALL_HINT = "pip install 'pmatch-duckdb[clip]'"
SIMPLE_BPE = "openclip-simple-bpe"


class ExportError(PmatchError):
    """An OpenCLIP checkpoint could not be exported (unsupported architecture, weights that do not fit, ...)."""


# --------------------------------------------------------------------------------------------- inputs

def resolve_weights(weights: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The checkpoint file to read, and the folder's ``open_clip_config.json`` when ``weights`` is a folder.

    A missing path is a :class:`ModelNotFoundError` naming it (nothing is ever downloaded instead).
    """
    p = Path(weights).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"weights path {str(p)!r} does not exist (export-openclip reads a local "
                                 f"checkpoint file or folder and never downloads weights)")
    config = None
    if p.is_dir():
        cfg = p / "open_clip_config.json"
        config = cfg if cfg.is_file() else None
        found = [p / n for n in PREFERRED_CHECKPOINTS if (p / n).is_file()]
        if not found:
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix in WEIGHT_SUFFIXES)
        if not found:
            raise ModelNotFoundError(f"no checkpoint ({', '.join(WEIGHT_SUFFIXES)}) in folder {str(p)!r}")
        p = found[0]
    if p.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"weights file {str(p)!r}: expected one of {', '.join(WEIGHT_SUFFIXES)} "
                          f"(safetensors, or a torch state dict loadable with weights_only=True)")
    return p.resolve(), config


def load_state_dict(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or ``torch.load(weights_only=True)`` (never unpickles code)."""
    import pickle

    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ExportError(f"cannot read safetensors file {str(path)!r}: {e}") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(
                f"cannot read {str(path)!r} with torch.load(weights_only=True): {first}. Only plain state "
                f"dicts (tensors) are read - no pickled objects, no TorchScript archives; convert the "
                f"checkpoint to a state dict or .safetensors") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ExportError(f"{str(path)!r} does not hold a state dict of tensors")
    if next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_into(model: Any, sd: dict[str, Any], arch: str, path: Path) -> None:
    """open_clip's checkpoint conversions (as ``open_clip.load_checkpoint``), then a strict load."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    try:
        sd = convert_state_dict(model, sd)
        if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
            sd = convert_to_custom_text_state_dict(sd)
        for key in ("logit_scale", "logit_bias"):
            param = getattr(model, key, None)
            if key in sd and param is not None and param.ndim != sd[key].ndim:
                sd[key] = sd[key].reshape(param.shape)
        if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
            import torch

            sd["logit_bias"] = torch.zeros_like(model.logit_bias)
        # Hugging Face text towers saved with transformers < 4.31 (the LAION XLM-R CLIPs) carry this buffer,
        # which transformers no longer keeps in the state dict; open_clip's load_checkpoint drops it too
        sd.pop(HF_POSITION_IDS, None)
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, AssertionError, KeyError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"the weights in {str(path)!r} do not fit architecture {arch!r}: {detail} "
                          f"(is --arch right? OpenAI checkpoints need the '-quickgelu' variant or "
                          f"--pretrained-tag openai)") from None


def _check_text_cfg(arch: str, cfg: dict[str, Any], builtin: bool) -> dict[str, Any]:
    """The text config, if its text tower and tokenizer are ones we export; else a clear error.

    Text towers: open_clip's own transformer, or - with ``text_cfg.hf_model_name`` - a Hugging Face
    encoder (XLM-R, RoBERTa, BERT; its type is checked in :func:`read_hf_text_config`). Tokenizers:
    open_clip's SimpleTokenizer (BPE), or - with ``text_cfg.hf_tokenizer_name`` - a Hugging Face tokenizer
    (open_clip's ``HFTokenizer``: SigLIP, SigLIP2, CLIPA, the XLM-R CLIPs, ...).
    """
    text_cfg = cfg.get("text_cfg", {})
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if text_cfg.get("hf_model_name") and not text_cfg.get("hf_tokenizer_name"):
        raise ExportError(f"architecture {arch!r} has a Hugging Face text tower ({text_cfg['hf_model_name']}) "
                          f"but no hf_tokenizer_name: open_clip would tokenize it with its CLIP BPE tokenizer")
    if text_cfg.get("output_tokens"):
        raise ExportError(f"architecture {arch!r}: text_cfg.output_tokens is not supported (one embedding per text)")
    if text_cfg.get("tokenizer_mode"):
        raise ExportError(f"architecture {arch!r}: tokenizer_mode {text_cfg['tokenizer_mode']!r} is not supported")
    if text_cfg.get("hf_tokenizer_name"):  # open_clip's get_tokenizer: a non-empty name -> HFTokenizer
        if "language" in kwargs:
            raise ExportError(f"architecture {arch!r}: tokenizer option 'language' is not supported")
        return text_cfg
    if builtin and "siglip" in arch.lower():
        # open_clip would build its SigLipTokenizer from a vocabulary it downloads
        raise ExportError(f"architecture {arch!r} has no hf_tokenizer_name: its SigLIP tokenizer would be "
                          f"downloaded; use a config (open_clip_config.json) that names a local tokenizer")
    extra = set(kwargs) - {"clean"}
    if extra:
        raise ExportError(f"architecture {arch!r}: unsupported tokenizer options {sorted(extra)}")
    return text_cfg


def resolve_hf_text_dir(label: str, hf_model_name: str, weights: str | os.PathLike[str], checkpoint: Path,
                        hf_text_dir: str | os.PathLike[str] | None) -> Path:
    """The local Hugging Face folder (``config.json`` + tokenizer files) of the text tower ``hf_model_name``.

    ``hf_text_dir`` (``--hf-text-dir``) when given; else the folder named ``hf_model_name`` inside the
    checkpoint's folder (``--weights`` when it is a folder, else the checkpoint file's folder), e.g.
    ``weights/xlm-roberta-base/``. That default must stay inside the checkpoint's folder once resolved
    (no ``..``, absolute names or symbolic links leading elsewhere); ``hf_model_name`` is never looked up
    anywhere else (not a hub, not the current folder). Else a :class:`ModelNotFoundError` saying what to pass.
    """
    if hf_text_dir is not None:
        p = Path(hf_text_dir).expanduser()
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"--hf-text-dir {str(p)!r} is not a Hugging Face model folder (no config.json "
                                     f"in it): pass the local folder of {hf_model_name!r} (config.json and "
                                     f"tokenizer files)")
        return p.resolve()
    base = Path(weights).expanduser()
    base = (base if base.is_dir() else checkpoint.parent).resolve()
    candidate = base / hf_model_name
    found = candidate.resolve() if candidate.is_dir() else None
    if found is not None and found.is_relative_to(base) and found != base and (found / "config.json").is_file():
        return found
    where = (f"; {str(candidate)!r} resolves outside {str(base)!r}, which is not followed"
             if found is not None and not found.is_relative_to(base) else "")
    raise ModelNotFoundError(
        f"architecture {label!r} has a Hugging Face text tower {hf_model_name!r} (text_cfg.hf_model_name), and "
        f"nothing is downloaded: pass --hf-text-dir DIR (hf_text_dir=DIR in Python), a local folder with its "
        f"config.json and tokenizer files (e.g. a snapshot of the Hugging Face repo {hf_model_name}), or put "
        f"that folder inside the checkpoint's folder as {str(candidate)!r}{where}")


def read_hf_text_config(label: str, folder: Path) -> dict[str, Any]:
    """``folder/config.json`` of a Hugging Face text tower, refused unless its ``model_type`` is exported.

    Read as JSON before transformers sees it: a config asking for remote code (``auto_map``) is refused
    (transformers would refuse it too, without ``trust_remote_code``).
    """
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {str(folder / 'config.json')!r}: {e}") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{str(folder / 'config.json')!r} is not a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in HF_TEXT_TYPES:
        raise ExportError(f"architecture {label!r}: the Hugging Face text tower in {str(folder)!r} is "
                          f"{model_type!r}; export-openclip supports {', '.join(HF_TEXT_TYPES)} text towers "
                          f"(encoder-decoder towers such as mT5 or NLLB are not supported)")
    if cfg.get("auto_map"):
        raise ExportError(f"{str(folder / 'config.json')!r} asks for custom code (auto_map); it is never run")
    return cfg


def _has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in TOKENIZER_FILES)


def resolve_tokenizer(label: str, hf_name: str, weights: str | os.PathLike[str], config_file: Path | None,
                      tokenizer: str | os.PathLike[str] | None, hf_text: tuple[str, Path] | None = None) -> Path:
    """The local folder to load the Hugging Face tokenizer ``hf_name`` from (nothing is downloaded).

    In order: ``tokenizer`` (``--tokenizer``); the Hugging Face text tower's folder ``hf_text`` =
    ``(hf_model_name, folder)`` when the tokenizer has the tower's name and the folder holds tokenizer
    files (the XLM-R CLIPs); the folder of a local ``open_clip_config.json`` when it holds tokenizer files
    (open_clip's ``local-dir:`` rule); ``hf_name`` when it is a local folder; the weights folder when it
    holds tokenizer files. Else a :class:`ModelNotFoundError` saying what to pass.
    """
    files = ", ".join(TOKENIZER_FILES[:3])
    if tokenizer is not None:
        p = Path(tokenizer).expanduser()
        if not p.is_dir():
            raise ModelNotFoundError(f"tokenizer folder {str(p)!r} does not exist (--tokenizer takes a local "
                                     f"folder with the Hugging Face tokenizer files: {files}, ...)")
        if not _has_tokenizer_files(p):
            raise ModelNotFoundError(f"tokenizer folder {str(p)!r} holds no Hugging Face tokenizer files "
                                     f"({', '.join(TOKENIZER_FILES)})")
        return p.resolve()
    if hf_text is not None and hf_text[0] == hf_name and _has_tokenizer_files(hf_text[1]):
        return hf_text[1]
    if config_file is not None and _has_tokenizer_files(config_file.parent):
        return config_file.parent.resolve()
    local = Path(hf_name).expanduser()
    if local.is_dir():
        return local.resolve()
    folder = Path(weights).expanduser()
    if _has_tokenizer_files(folder):
        return folder.resolve()
    raise ModelNotFoundError(
        f"architecture {label!r} tokenizes text with the Hugging Face tokenizer {hf_name!r} "
        f"(text_cfg.hf_tokenizer_name), which is not a local folder, and nothing is downloaded: pass "
        f"--tokenizer PATH (tokenizer=PATH in Python), a local folder with its files ({files}, ...; e.g. a "
        f"snapshot of the Hugging Face repo {hf_name}), or give --weights as a snapshot folder that holds them")


# --------------------------------------------------------------------------------------------- model

def load_hf_tokenizer(path: Path, context_length: int, clean: str, strip_sep_token: bool,
                      kwargs: dict[str, Any] | None = None) -> Any:
    """open_clip's own ``HFTokenizer`` for the local tokenizer folder ``path`` (``local_files_only``).

    It is what ``open_clip.get_tokenizer`` builds for ``text_cfg.hf_tokenizer_name`` (with the config's
    ``tokenizer_kwargs``: ``clean``, ``strip_sep_token``, the rest passed to ``AutoTokenizer``), only read
    from ``path`` instead of the hub; the export writes its fast tokenizer and checks parity against it.
    """
    try:
        import transformers  # noqa: F401  (HFTokenizer imports it; a clear error when it is missing)
        from open_clip.tokenizer import HFTokenizer
    except ImportError as e:
        raise ExportError(f"Hugging Face tokenizers need transformers ({e}); install the clip extra: "
                          f"{INSTALL_HINT}") from None
    try:
        return HFTokenizer(str(path), context_length=context_length, clean=clean, strip_sep_token=strip_sep_token,
                           local_files_only=True, **(kwargs or {}))
    except Exception as e:  # transformers raises OSError, ValueError, ... for unreadable folders
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot load a Hugging Face tokenizer from {str(path)!r}: {detail}") from None


def load_model(arch: str | None, weights: str | os.PathLike[str], *, pretrained_tag: str | None = None,
               preprocess: dict[str, Any] | None = None, tokenizer: str | os.PathLike[str] | None = None,
               hf_text_dir: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Build the open_clip model for ``arch``, load ``weights`` into it; return ``(model, info)``.

    ``info`` holds ``arch``, ``model_cfg``, ``preprocess`` (final preprocessing), ``clean`` (tokenizer
    clean mode), ``tokenizer`` (its type, and for a Hugging Face tokenizer the folder read and open_clip's
    ``HFTokenizer`` loaded from it), ``weights`` (the file read) and ``config_file`` (a folder's
    ``open_clip_config.json``). ``pretrained_tag`` names one of open_clip's pretrained tags for ``arch``
    whose *metadata* (mean/std, interpolation, resize mode, QuickGELU) describes the checkpoint;
    ``tokenizer`` a local Hugging Face tokenizer folder (see :func:`resolve_tokenizer`); ``hf_text_dir`` the
    local folder of a Hugging Face text tower (``text_cfg.hf_model_name``, see :func:`resolve_hf_text_dir`),
    from whose ``config.json`` open_clip builds the tower (randomly initialised, then the checkpoint is
    loaded; the folder's own weights are never read). ``info["hf_text"]`` describes it. Nothing is downloaded.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: open_clip must never reach a hub here
    path, config_file = resolve_weights(weights)
    try:
        import open_clip
        import torch  # noqa: F401
    except ImportError as e:
        raise ExportError(f"exporting OpenCLIP weights needs the clip extra ({e}); install it with: "
                          f"{INSTALL_HINT}") from None

    force_pp: dict[str, Any] = {}
    quick_gelu = False
    if arch is None:
        if config_file is None:
            raise ConfigError("give --arch (an open_clip architecture such as ViT-B-32), or a weights folder "
                              "with an open_clip_config.json")
        file_cfg = json.loads(config_file.read_text())
        model_cfg = file_cfg.get("model_cfg", file_cfg)
        arch_id = f"local-dir:{config_file.parent}"
        label = config_file.parent.name
    else:
        if ":" in arch:
            raise ConfigError(f"--arch {arch!r}: schemas such as hf-hub: are not supported (nothing is "
                              f"downloaded); pass a built-in architecture name and --weights")
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ConfigError(f"unknown open_clip architecture {arch!r}; known: "
                              f"{', '.join(open_clip.list_models())}")
        arch_id = label = arch
        if pretrained_tag:
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained_tag)
            if not tag_cfg:
                tags = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch) or "none"
                raise ConfigError(f"open_clip knows no pretrained tag {pretrained_tag!r} for {arch!r} "
                                  f"(known: {tags})")
            force_pp.update({k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg})
            quick_gelu = bool(tag_cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)
    text_cfg = _check_text_cfg(label, model_cfg, builtin=arch is not None)
    context_length = int(text_cfg.get("context_length", 77))
    tok_kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    hf_model = text_cfg.get("hf_model_name")
    hf_text: dict[str, Any] | None = None
    if hf_model:
        hf_dir = resolve_hf_text_dir(label, hf_model, weights, path, hf_text_dir)
        hf_cfg = read_hf_text_config(label, hf_dir)
        hf_text = {"hf_model_name": hf_model, "path": hf_dir, "model_type": hf_cfg["model_type"],
                   "pooler": text_cfg.get("hf_pooler_type", "mean_pooler"), "proj": text_cfg.get("hf_proj_type", "mlp"),
                   "config_sha256": sha256_file(hf_dir / "config.json")}
    elif hf_text_dir is not None:
        raise ConfigError(f"--hf-text-dir applies to architectures with a Hugging Face text tower "
                          f"(text_cfg.hf_model_name, e.g. xlm-roberta-base-ViT-B-32); {label!r} has open_clip's own")
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name:  # as open_clip.get_tokenizer: HFTokenizer, whose default clean mode is 'whitespace'
        tok_path = resolve_tokenizer(label, hf_name, weights, config_file, tokenizer,
                                     None if hf_text is None else (hf_model, hf_text["path"]))
        clean = tok_kwargs.get("clean", "whitespace")
        strip_sep = bool(tok_kwargs.get("strip_sep_token", False))
        tok_info: dict[str, Any] = {
            "type": HF_JSON, "hf_tokenizer_name": hf_name, "path": tok_path, "strip_sep_token": strip_sep,
            "reference": load_hf_tokenizer(tok_path, context_length, clean, strip_sep,
                                           {k: v for k, v in tok_kwargs.items() if k not in HF_TOKENIZER_OPTIONS})}
    else:
        if tokenizer is not None:
            raise ConfigError(f"--tokenizer applies to architectures with a Hugging Face tokenizer "
                              f"(text_cfg.hf_tokenizer_name, e.g. SigLIP); {label!r} uses open_clip's own BPE "
                              f"tokenizer, which ships with open_clip")
        clean = tok_kwargs.get("clean", "lower")
        tok_info = {"type": SIMPLE_BPE}
    force_pp.update({k: v for k, v in (preprocess or {}).items() if v is not None})
    unknown = set(force_pp) - set(PREPROCESS_KEYS)
    if unknown:
        raise ConfigError(f"unknown preprocessing options {sorted(unknown)}; known: {', '.join(PREPROCESS_KEYS)}")

    overrides: dict[str, Any] = {}
    if hf_text is not None:
        # open_clip's HFTextEncoder calls AutoConfig.from_pretrained(hf_model_name): give it the local folder
        # (create_model's keyword overrides replace model_cfg keys), random init - the checkpoint follows
        overrides["text_cfg"] = {**model_cfg["text_cfg"], "hf_model_name": str(hf_text["path"]),
                                 "hf_model_pretrained": False}
    try:
        model = open_clip.create_model(arch_id, pretrained=None, load_weights=False, pretrained_image=False,
                                       pretrained_text=False, force_quick_gelu=quick_gelu,
                                       force_preprocess_cfg=force_pp or None, device="cpu", **overrides)
    except (OSError, ValueError, KeyError) as e:  # transformers' errors for a config it cannot build
        if hf_text is None:
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot build the Hugging Face text tower from {str(hf_text['path'])!r}: {detail}") from None
    _load_into(model, load_state_dict(path), label, path)
    model.eval()
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    size = pp.get("size", model.visual.image_size)
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    info = {
        "arch": arch or f"local-dir:{config_file.parent}",  # type: ignore[union-attr]
        "model_cfg": model_cfg,
        "quick_gelu": bool(model_cfg.get("quick_gelu", False) or quick_gelu),
        "preprocess": {"color": "RGB", "size": size, "resize_mode": pp.get("resize_mode", "shortest"),
                       "interpolation": pp.get("interpolation", "bicubic"), "fill_color": int(pp.get("fill_color", 0)),
                       "scale": 1.0 / 255.0, "mean": [float(x) for x in pp["mean"]],
                       "std": [float(x) for x in pp["std"]], "layout": "NCHW"},
        "clean": clean,
        "context_length": context_length,
        "tokenizer": tok_info,
        "hf_text": hf_text,
        "weights": path,
        "config_file": config_file,
        "pretrained_tag": pretrained_tag,
    }
    if info["preprocess"]["interpolation"] not in ("bicubic", "bilinear"):
        info["preprocess"]["interpolation"] = "bicubic"  # open_clip uses bicubic for anything else at inference
    return model, info


def tower_modules(model: Any) -> tuple[Any, Any]:
    """``(text, image)`` torch modules with the exported signatures (normalised embeddings)."""
    import torch

    class Tower(torch.nn.Module):
        """One tower of ``m``: ``m.<encode>(x, normalize=True)``."""

        def __init__(self, m: torch.nn.Module, encode: str) -> None:
            super().__init__()
            self.m = m
            self.encode = encode

        def forward(self, x):  # noqa: ANN001
            return getattr(self.m, self.encode)(x, normalize=True)

    return Tower(model, "encode_text").eval(), Tower(model, "encode_image").eval()


def _export(module: Any, args: tuple, path: Path, input_name: str) -> None:
    import warnings

    import onnx
    import torch

    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX export
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter's deprecation notice and tracer warnings about shape checks in
            # open_clip/torch code: the graphs are checked against torch right after export
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(path), input_names=[input_name], output_names=["embedding"],
                              dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    onnx.checker.check_model(str(path))


def _check(bundle_dir: Path, text: Any, image: Any, ids: Any, pixels: Any) -> dict[str, float]:
    """Max |onnx - torch| of both towers (raises past :data:`CHECK_TOL`)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    out = {}
    for key, module, arg, name in (("text", text, ids, "input_ids"), ("image", image, pixels, "pixels")):
        sess = ort.InferenceSession(str(bundle_dir / f"{key}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(["embedding"], {name: arg.numpy()})[0]
        with torch.no_grad():
            want = module(arg).numpy()
        diff = float(np.abs(got - want).max())
        if not diff <= CHECK_TOL:
            raise ExportError(f"{key} tower: ONNX and torch disagree by {diff:.2e} (> {CHECK_TOL})")
        out[f"{key}_max_abs_diff"] = diff
    return out


def export_hf_tokenizer(ref: Any, dest: Path, clean: str) -> dict[str, Any]:
    """Write the fast tokenizer of open_clip's ``HFTokenizer`` ``ref`` as a ``tokenizers`` JSON to ``dest``.

    The JSON gets the truncation and padding ``ref`` asks transformers for on every call
    (``max_length=context_length, padding="max_length", truncation=True``: longest-first truncation on
    the tokenizer's truncation side, padding with its pad token on its padding side). Returns the
    manifest's tokenizer section. A slow-only (Python) tokenizer, or one without a pad token, is an error.
    """
    from tokenizers import Tokenizer

    hf = ref.tokenizer
    kind = type(hf).__name__
    if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
        raise ExportError(f"the Hugging Face tokenizer {kind} is a slow (Python) tokenizer with no fast "
                          f"version; export-openclip needs a fast tokenizer (a folder with tokenizer.json, or "
                          f"a tokenizer class transformers can convert to one)")
    if hf.pad_token is None or hf.pad_token_id is None:
        raise ExportError(f"the Hugging Face tokenizer {kind} has no pad token: open_clip pads every text to "
                          f"context_length with it")
    ctx = int(ref.context_length)
    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=ctx, stride=0, strategy="longest_first", direction=hf.truncation_side)
    backend.enable_padding(length=ctx, direction=hf.padding_side, pad_id=int(hf.pad_token_id),
                           pad_token=str(hf.pad_token), pad_type_id=int(hf.pad_token_type_id))
    backend.save(str(dest))
    sep = hf.sep_token_id if ref.strip_sep_token else None
    return {"type": HF_JSON, "file": dest.name, "context_length": ctx, "clean": clean,
            "add_special_tokens": True, "split_special_tokens": bool(getattr(hf, "split_special_tokens", False)),
            "pad_id": int(hf.pad_token_id), "pad_token": str(hf.pad_token), "padding_side": hf.padding_side,
            "truncation": "longest_first", "truncation_side": hf.truncation_side,
            "strip_sep_token": bool(ref.strip_sep_token), "sep_id": None if sep is None else int(sep),
            "eos_id": hf.eos_token_id, "bos_id": hf.bos_token_id,
            "vocab_size": backend.get_vocab_size(with_added_tokens=True), "class": kind}


def build(bundle_dir: Path, name: str, model: Any, info: dict[str, Any], log: Callable[[str], None] = print
          ) -> dict[str, Any]:
    """Write both ONNX towers, the tokenizer files and the manifest of an exported CLIP into ``bundle_dir``."""
    import open_clip
    import torch
    from open_clip.tokenizer import default_bpe

    from ..encoders.clip_hf_tokenizer import HFJsonTokenizer
    from ..encoders.clip_tokenizer import VOCAB_FILE, ClipTokenizer

    ctx = info["context_length"]
    hf_text = info.get("hf_text")
    if hf_text is not None:  # open_clip's HFTextEncoder: its transformers config's vocabulary
        vocab = int(model.text.config.vocab_size)
    else:
        vocab = int(info["model_cfg"].get("text_cfg", {}).get("vocab_size", 49408))
    ours: ClipTokenizer | HFJsonTokenizer
    if info["tokenizer"]["type"] == HF_JSON:
        ref = info["tokenizer"]["reference"]
        tok_spec = export_hf_tokenizer(ref, bundle_dir / HF_JSON_FILE, info["clean"])
        tok_spec.update(hf_tokenizer_name=info["tokenizer"]["hf_tokenizer_name"],
                        source=str(info["tokenizer"]["path"]))
        ours = HFJsonTokenizer.from_spec(bundle_dir / HF_JSON_FILE, tok_spec)
        max_id = max(ours.tokenizer.get_vocab(with_added_tokens=True).values())
        if max_id >= vocab:
            raise ExportError(f"the tokenizer in {str(info['tokenizer']['path'])!r} has token ids up to {max_id}, "
                              f"past the text tower's vocabulary ({vocab}): is it the tokenizer of these weights?")
        ref_name = "open_clip's HFTokenizer"
        if hf_text is not None and int(model.text.config.pad_token_id) != tok_spec["pad_id"]:
            # HFTextEncoder masks attention with ids != config.pad_token_id: they must be the same token
            raise ExportError(f"the tokenizer in {str(info['tokenizer']['path'])!r} pads with id {tok_spec['pad_id']}, "
                              f"the text tower in {str(hf_text['path'])!r} masks pad_token_id "
                              f"{model.text.config.pad_token_id}: is it the tokenizer of this text tower?")
    else:
        shutil.copyfile(default_bpe(), bundle_dir / VOCAB_FILE)
        ours = ClipTokenizer(bundle_dir / VOCAB_FILE, context_length=ctx, clean=info["clean"])
        ref = open_clip.tokenizer.SimpleTokenizer(context_length=ctx, clean=info["clean"])
        if vocab != ours.vocab_size:
            raise ExportError(f"text vocabulary size {vocab} != open_clip BPE vocabulary {ours.vocab_size}")
        tok_spec = {"type": SIMPLE_BPE, "vocab": VOCAB_FILE, "context_length": ctx, "clean": info["clean"],
                    "sot_id": ours.sot_id, "eot_id": ours.eot_id, "pad_id": 0,
                    "truncation": "keep first context_length-1, then end token"}
        ref_name = "open_clip's SimpleTokenizer"
    texts = list(TOKENIZER_CHECK_TEXTS)
    got, want = ours(texts), ref(texts).numpy()
    for text, g, w in zip(texts, got, want, strict=True):
        if g.tolist() != w.tolist():
            raise ExportError(f"the runtime CLIP tokenizer disagrees with {ref_name} on {text[:60]!r}: "
                              f"{g.tolist()} != {w.tolist()}")

    text, image = tower_modules(model)
    h, w = info["preprocess"]["size"]
    ids = torch.from_numpy(got)  # every check text: the ONNX check sees short, padded and truncated rows
    pixels = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(0))
    log(f"{name}: exporting the text tower ...")
    _export(text, (ids[:2],), bundle_dir / "text.onnx", "input_ids")
    log(f"{name}: exporting the image tower ...")
    _export(image, (pixels[:2],), bundle_dir / "image.onnx", "pixels")
    check = _check(bundle_dir, text, image, ids, pixels)
    with torch.no_grad():
        dim = int(text(ids[:1]).shape[-1])

    weights: Path = info["weights"]
    log(f"{name}: hashing {weights} ...")
    return finish_bundle(bundle_dir, {
        "name": name,
        "recipe": RECIPE,
        "modality": MODALITY,
        "dim": dim,
        "kind": "onnx-clip",
        "normalized": True,
        "towers": {
            "text": {"file": "text.onnx", "inputs": {"input_ids": f"int64[batch,{ctx}]"}, "output": "embedding",
                     "tokenizer": tok_spec},
            "image": {"file": "image.onnx", "inputs": {"pixels": f"float32[batch,3,{h},{w}]"},
                      "output": "embedding", "preprocessing": info["preprocess"]},
        },
        "source": {"package": "open_clip_torch", "version": package_version("open_clip_torch"),
                   "arch": info["arch"], "pretrained_tag": info["pretrained_tag"],
                   "quick_gelu": info["quick_gelu"], "model_cfg": info["model_cfg"],
                   "weights": str(weights), "weights_sha256": sha256_file(weights),
                   **({} if hf_text is None else {"hf_text": {**hf_text, "path": str(hf_text["path"])}})},
        "exporter": {"torch": package_version("torch"), "onnx": package_version("onnx"), "opset": OPSET,
                     "check": check},
    })


def export_openclip(arch: str | None, weights: str | os.PathLike[str], name: str,
                    home: str | os.PathLike[str] | None = None, *, force: bool = False,
                    pretrained_tag: str | None = None, preprocess: dict[str, Any] | None = None,
                    tokenizer: str | os.PathLike[str] | None = None,
                    hf_text_dir: str | os.PathLike[str] | None = None, log: Callable[[str], None] = print) -> Path:
    """Export an OpenCLIP checkpoint on disk to the CLIP bundle ``<home>/models/<name>``; return its path.

    ``arch``: an open_clip architecture (``ViT-B-32``, ``RN50``, ...), or None when ``weights`` is a folder
    with ``open_clip_config.json``. ``weights``: a ``.safetensors``/``.bin``/``.pt``/``.pth`` state dict,
    or a folder holding one. ``pretrained_tag``: take mean/std, interpolation, resize mode and QuickGELU
    from this open_clip tag's metadata (e.g. ``openai``, ``laion2b_s34b_b79k``; nothing is downloaded).
    ``preprocess``: explicit overrides (``mean``, ``std``, ``interpolation``, ``resize_mode``,
    ``fill_color``; the input size is the architecture's). ``tokenizer``: a local folder with the Hugging
    Face tokenizer of an architecture that names one (``text_cfg.hf_tokenizer_name``: SigLIP, SigLIP2, ...),
    needed unless that name is itself a local folder or ``weights`` is a snapshot folder holding the
    tokenizer files. ``hf_text_dir``: the local Hugging Face folder (``config.json`` + tokenizer files) of
    an architecture whose text tower is a Hugging Face model (``text_cfg.hf_model_name``, e.g. the XLM-R
    CLIPs), needed unless that folder sits inside the checkpoint's folder under the tower's name (e.g.
    ``<weights folder>/xlm-roberta-base``). An existing bundle of that name is replaced only with ``force``.
    """
    check_new_bundle_name(name)
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is the name of a default model; choose another name")
    final = models_dir(home) / name
    if final.exists() and not force:
        raise ConfigError(f"a model bundle named {name!r} already exists in {final.parent}; "
                          f"pass force=True (--force) to replace it")
    model, info = load_model(arch, weights, pretrained_tag=pretrained_tag, preprocess=preprocess,
                             tokenizer=tokenizer, hf_text_dir=hf_text_dir)
    with staging_dir(final) as tmp:
        build(tmp, name, model, info, log=log)
    bundle = find_bundle(name, home)
    try:
        bundle.verify()
    except ModelIntegrityError as e:  # pragma: no cover - the bundle was just written
        raise ExportError(str(e)) from None
    log(f"{name}: CLIP bundle (dim {bundle.dim}) written to {bundle.path}")
    return bundle.path
