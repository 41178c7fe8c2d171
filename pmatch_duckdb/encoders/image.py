"""Image encoder: Pillow preprocessing (as recorded in the bundle) + ONNX Runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..bundles import Bundle
from .image_io import ImagePolicy, load_image
from .sessions import cpu_count, get_session

_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def overlap_decoding(threads: int) -> bool:
    """Whether to decode the next batch while the model runs: only when the model's ``threads`` leave a core
    free (``$PMATCH_OVERLAP_DECODING`` = 0 or 1 overrides; Ray workers set 0, their CPU reservation being
    their model threads). Measured on 2 cores (benchmarks/README.md, "image int8: the Clip round trips"): with
    ONNX Runtime on one thread, overlapping gave 1.14x (fp32) and 1.33x (int8) images/s; on both, 0.90-0.95x."""
    env = os.environ.get("PMATCH_OVERLAP_DECODING", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return threads < cpu_count()


class ImageEncoder:
    """Batched image embedding; failed images yield a NaN-free zero row plus a reason."""

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 32, prefetch: bool | None = None) -> None:
        if bundle.modality != "image":
            raise ValueError(f"bundle {bundle.name!r} is a {bundle.modality} model, not an image model")
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        self.prefetch = overlap_decoding(threads) if prefetch is None else prefetch
        pre = bundle.manifest["preprocessing"]
        self.resize = int(pre["resize_shorter"])
        self.crop = int(pre["center_crop"])
        self.interp = _INTERP[pre.get("interpolation", "bilinear")]
        self.scale = float(pre.get("scale", 1 / 255))
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self._gain, self._offset = self.scale / self.std, -self.mean / self.std  # (x * scale - mean) / std
        self.session = get_session(bundle.file("model.onnx"), bundle.manifest["files"]["model.onnx"], threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output = bundle.manifest.get("output", "embedding")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image → normalised ``float32[3, crop, crop]`` (resize shorter side, centre crop).

        Scaling and normalisation are one fused multiply-add from the uint8 pixels into the output array
        (three float passes fewer than ``(x * scale - mean) / std``; the same values to float rounding).
        """
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        img = img.resize((nw, nh), self.interp)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        out = np.empty((3, self.crop, self.crop), dtype=np.float32)
        np.multiply(np.asarray(img).transpose(2, 0, 1), self._gain, out=out)
        out += self._offset
        return out

    def run(self, pixels: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run the graph on a preprocessed batch in chunks of ``batch_size``."""
        names = outputs or [self.output]
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(pixels), self.batch_size):
            res = self.session.run(names, {self.input_name: pixels[start:start + self.batch_size]})
            for acc, r in zip(parts, res, strict=True):
                acc.append(r)
        return [np.concatenate(p) if p else np.zeros((0, self.dim), np.float32) for p in parts]

    def _load_chunk(self, sources: Sequence[str | bytes | None], idx: range, policy: ImagePolicy,
                    reasons: list[str | None]) -> tuple[list[int], np.ndarray | None]:
        """Decode and preprocess ``sources[idx]``: (indices that loaded, their pixels); failures get a reason."""
        ok: list[int] = []
        pixels: list[np.ndarray] = []
        for i in idx:
            loaded = load_image(sources[i], policy, draft_size=self.resize)
            if loaded.image is None:
                reasons[i] = loaded.reason
                continue
            pixels.append(self.preprocess(loaded.image))
            ok.append(i)
        return ok, (np.stack(pixels) if pixels else None)

    def encode(self, sources: Sequence[str | bytes | None], policy: ImagePolicy
               ) -> tuple[np.ndarray, list[str | None]]:
        """Embed images given as paths or encoded bytes.

        Returns ``(vectors float32[n, dim], reasons)``; rows whose reason is not None are all-zero.
        Where the model leaves a core free (``prefetch``, see :func:`overlap_decoding`), decoding and
        preprocessing the next batch runs in a worker thread while ONNX Runtime embeds the current one (Pillow
        and ONNX Runtime release the GIL): the decode cost hides behind the model's instead of adding to it,
        which matters most for the fast int8 models.
        """
        n = len(sources)
        out = np.zeros((n, self.dim), dtype=np.float32)
        reasons: list[str | None] = [None] * n
        chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        for ok, pixels in self._loaded_chunks(sources, chunks, policy, reasons):
            if pixels is not None:
                out[ok] = self.run(pixels)[0]
        return out, reasons

    def _loaded_chunks(self, sources: Sequence[str | bytes | None], chunks: list[range], policy: ImagePolicy,
                       reasons: list[str | None]) -> Iterator[tuple[list[int], np.ndarray | None]]:
        """:meth:`_load_chunk` of each chunk in order; with ``prefetch``, chunk j+1 is decoded in a worker thread
        while the caller embeds chunk j."""
        if len(chunks) <= 1 or not self.prefetch:
            for idx in chunks:
                yield self._load_chunk(sources, idx, policy, reasons)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pmatch-image-decode") as pool:
            pending = pool.submit(self._load_chunk, sources, chunks[0], policy, reasons)
            for nxt in [*chunks[1:], None]:
                done = pending.result()
                if nxt is not None:
                    pending = pool.submit(self._load_chunk, sources, nxt, policy, reasons)
                yield done
