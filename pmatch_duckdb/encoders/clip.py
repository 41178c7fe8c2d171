"""CLIP encoders: the text and image towers of one ``clip`` bundle (exported by ``pmatch models export-openclip``).

A CLIP bundle is one directory with both towers (``text.onnx``, ``image.onnx``), the text tokenizer
(open_clip's BPE vocabulary, or a ``tokenizers`` JSON for models with a Hugging Face tokenizer such as
SigLIP) and a manifest whose ``towers`` section describes each tower (file, input, output, tokenizer or image
preprocessing). Both towers output L2-normalised vectors in one shared space, so a text vector and an
image vector of the same bundle are comparable (text -> image search). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..bundles import Bundle
from ..errors import ModelIntegrityError
from .clip_hf_tokenizer import TYPE as HF_JSON
from .clip_hf_tokenizer import HFJsonTokenizer
from .clip_tokenizer import ClipTokenizer
from .image import _INTERP, ImageEncoder
from .sessions import get_session

MODALITY = "clip"


def tower_spec(bundle: Bundle, tower: str) -> dict[str, Any]:
    """The manifest's description of one tower (``"text"`` or ``"image"``) of a CLIP bundle."""
    spec = bundle.manifest.get("towers", {}).get(tower)
    if bundle.modality != MODALITY or not isinstance(spec, dict) or "file" not in spec:
        raise ModelIntegrityError(f"bundle {bundle.name!r} has no {tower} tower in its manifest; "
                                  f"re-export it with: pmatch models export-openclip --force ...")
    return spec


def _session(bundle: Bundle, spec: dict[str, Any], threads: int, runs: int = 1):
    path = bundle.file(spec["file"])
    return get_session(path, bundle.manifest["files"][spec["file"]], threads, runs)


class ClipTextEncoder:
    """CLIP text tower: the bundle's tokenizer (no torch) + ONNX Runtime.

    Tokenizers: ``openclip-simple-bpe`` (open_clip's BPE, ported: OpenAI/LAION models) or
    ``hf-tokenizers-json`` (a Hugging Face fast tokenizer serialised for the ``tokenizers`` package:
    SigLIP, SigLIP2, CLIPA, ...). Every text is tokenized to exactly ``context_length`` ids (77 for
    OpenAI/LAION models, 64 for SigLIP); longer text is truncated as open_clip truncates it.
    """

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 64) -> None:
        spec = tower_spec(bundle, "text")
        tok = spec["tokenizer"]
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        self.tokenizer: ClipTokenizer | HFJsonTokenizer
        if tok.get("type") == "openclip-simple-bpe":
            self.tokenizer = ClipTokenizer(bundle.file(tok["vocab"]), context_length=int(tok["context_length"]),
                                           clean=tok.get("clean", "lower"))
        elif tok.get("type") == HF_JSON:
            self.tokenizer = HFJsonTokenizer.from_spec(bundle.file(tok["file"]), tok)
        else:
            raise ModelIntegrityError(f"bundle {bundle.name!r}: unsupported CLIP tokenizer {tok.get('type')!r}")
        self.session = _session(bundle, spec, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output = spec.get("output", "embedding")

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """``int64[n, context_length]`` token ids (what the ONNX graph takes)."""
        return self.tokenizer(list(texts))

    @staticmethod
    def prepare(texts: Sequence[str]) -> list[str]:
        """The texts themselves: a CLIP tower tokenises each batch to the context length as it runs (the
        counterpart of :meth:`TextEncoder.prepare`)."""
        return list(texts)

    @staticmethod
    def prepared_lengths(prepared: Sequence[str]) -> np.ndarray:
        """All equal: every text is padded to the context length (see :meth:`TextEncoder.prepared_lengths`)."""
        return np.zeros(len(prepared), dtype=np.int64)

    def encode_prepared(self, prepared: Sequence[str]) -> np.ndarray:
        """Same as :meth:`encode` (see :meth:`prepare`)."""
        return self.encode(prepared)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (non-empty strings) -> ``float32[len(texts), dim]``, L2-normalised."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            ids = self.tokenize(texts[start:start + self.batch_size])
            out[start:start + len(ids)] = self.session.run([self.output], {self.input_name: ids})[0]
        return out


class ClipImageEncoder(ImageEncoder):
    """CLIP image tower: open_clip's inference preprocessing, reproduced with Pillow, + ONNX Runtime.

    Preprocessing follows the bundle's ``towers.image.preprocessing`` (from the model's own
    ``preprocess_cfg``): ``resize_mode`` ``shortest`` (resize the shorter side, centre crop - the default),
    ``longest`` (resize the longer side, pad with ``fill_color``) or ``squash``; bicubic or bilinear;
    ``x / 255``, then mean/std. Sizes and crop offsets are computed exactly as torchvision does, so a
    decoded image gives the pixels ``open_clip``'s ``preprocess`` gives. Reading, safety limits, EXIF
    orientation and colour-mode conversion are the ones of every other image model (``image_io``).
    """

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 8, prefetch: bool | None = None,
                 workers: int | None = None) -> None:
        spec = tower_spec(bundle, "image")
        pre = spec["preprocessing"]
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        run_threads = self._plan_runs(threads, prefetch, workers)
        size = pre["size"]
        self.size = (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))
        self.resize_mode = pre.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ModelIntegrityError(f"bundle {bundle.name!r}: unknown resize_mode {self.resize_mode!r}")
        self.interp = _INTERP[pre.get("interpolation", "bicubic")]
        self.fill = int(pre.get("fill_color", 0))
        # JPEGs may be decoded at a reduced scale that is still at least this large (as for every image model)
        self.resize = max(self.size)
        self.crop = max(self.size)
        self.scale = float(pre.get("scale", 1 / 255))
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self.session = _session(bundle, spec, run_threads, runs=self.workers)
        self.input_name = self.session.get_inputs()[0].name
        self.output = spec.get("output", "embedding")

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize step, as torchvision / open_clip compute it."""
        th, tw = self.size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "shortest" and th == tw:
            # torchvision Resize(int): shorter side -> size, longer side truncated (int), not rounded
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = th, int(th * long / short)
            return (new_short, new_long) if w <= h else (new_long, new_short)
        # open_clip ResizeKeepRatio (longest=1 for 'longest', 0 for non-square 'shortest'): rounded
        rh, rw = h / th, w / tw
        ratio = max(rh, rw) if self.resize_mode == "longest" else min(rh, rw)
        return round(w / ratio), round(h / ratio)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image -> normalised ``float32[3, H, W]``, as open_clip's inference transform."""
        w, h = img.size
        nw, nh = self._resized_size(w, h)
        if (nw, nh) != (w, h):
            # non-square 'shortest' uses ResizeKeepRatio's default (bicubic) in open_clip
            interp = (Image.Resampling.BICUBIC if self.resize_mode == "shortest" and self.size[0] != self.size[1]
                      else self.interp)
            img = img.resize((nw, nh), interp)
        if self.resize_mode != "squash":
            img = self._center_crop_or_pad(img, fill=self.fill if self.resize_mode == "longest" else 0)
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * self.scale
        return (arr - self.mean) / self.std

    def _center_crop_or_pad(self, img: Image.Image, fill: int) -> Image.Image:
        th, tw = self.size
        w, h = img.size
        if tw > w or th > h:
            left, top = (tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0
            right, bottom = (tw - w + 1) // 2 if tw > w else 0, (th - h + 1) // 2 if th > h else 0
            padded = Image.new("RGB", (w + left + right, h + top + bottom), (fill, fill, fill))
            padded.paste(img, (left, top))
            img = padded
            w, h = img.size
            if (w, h) == (tw, th):
                return img
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))
