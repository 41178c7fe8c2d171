"""Image encoder: Pillow preprocessing (as recorded in the bundle) + ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..bundles import Bundle
from .image_io import ImagePolicy, load_image
from .sessions import get_session

_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class ImageEncoder:
    """Batched image embedding; failed images yield a NaN-free zero row plus a reason."""

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 32) -> None:
        if bundle.modality != "image":
            raise ValueError(f"bundle {bundle.name!r} is a {bundle.modality} model, not an image model")
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        pre = bundle.manifest["preprocessing"]
        self.resize = int(pre["resize_shorter"])
        self.crop = int(pre["center_crop"])
        self.interp = _INTERP[pre.get("interpolation", "bilinear")]
        self.scale = float(pre.get("scale", 1 / 255))
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self.session = get_session(bundle.file("model.onnx"), bundle.manifest["files"]["model.onnx"], threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output = bundle.manifest.get("output", "embedding")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image → normalised ``float32[3, crop, crop]`` (resize shorter side, centre crop)."""
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        img = img.resize((nw, nh), self.interp)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * self.scale
        return (arr - self.mean) / self.std

    def run(self, pixels: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run the graph on a preprocessed batch in chunks of ``batch_size``."""
        names = outputs or [self.output]
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(pixels), self.batch_size):
            res = self.session.run(names, {self.input_name: pixels[start:start + self.batch_size]})
            for acc, r in zip(parts, res, strict=True):
                acc.append(r)
        return [np.concatenate(p) if p else np.zeros((0, self.dim), np.float32) for p in parts]

    def encode(self, sources: Sequence[str | bytes | None], policy: ImagePolicy
               ) -> tuple[np.ndarray, list[str | None]]:
        """Embed images given as paths or encoded bytes.

        Returns ``(vectors float32[n, dim], reasons)``; rows whose reason is not None are all-zero.
        """
        n = len(sources)
        out = np.zeros((n, self.dim), dtype=np.float32)
        reasons: list[str | None] = [None] * n
        ok_idx: list[int] = []
        batch: list[np.ndarray] = []
        for i, src in enumerate(sources):
            loaded = load_image(src, policy, draft_size=self.resize)
            if loaded.image is None:
                reasons[i] = loaded.reason
                continue
            batch.append(self.preprocess(loaded.image))
            ok_idx.append(i)
            if len(batch) == self.batch_size:
                out[ok_idx[-len(batch):]] = self.run(np.stack(batch))[0]
                batch = []
        if batch:
            out[ok_idx[-len(batch):]] = self.run(np.stack(batch))[0]
        return out, reasons
