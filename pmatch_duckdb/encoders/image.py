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


def batch_workers(threads: int) -> int:
    """How many batches the image encoder embeds at once: ``threads`` (the ORT thread budget), each batch decoded,
    preprocessed and run on one ORT thread by its own worker; ``$PMATCH_IMAGE_WORKERS`` overrides (1: one batch at
    a time on all ``threads``, decoding between runs or, see :func:`overlap_decoding`, beside them).

    Why (benchmarks/README.md, "Images: one batch per core"): EfficientNet's small depthwise convolutions split
    poorly over threads, and with one batch at a time the decoding of the next batch leaves a core idle; one
    single-threaded batch per core keeps both busy. Each worker holds one batch's activations."""
    env = os.environ.get("PMATCH_IMAGE_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"PMATCH_IMAGE_WORKERS must be a whole number, not {env!r}") from None
    return max(1, threads)


class ImageEncoder:
    """Batched image embedding; failed images yield a NaN-free zero row plus a reason."""

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = 8, prefetch: bool | None = None,
                 workers: int | None = None) -> None:
        """``threads``: ORT threads in all; ``workers``: batches at once (default :func:`batch_workers`), each on
        ``threads // workers`` ORT threads; ``prefetch``: with one worker, decode the next batch in a thread
        while the model runs (default :func:`overlap_decoding`)."""
        if bundle.modality != "image":
            raise ValueError(f"bundle {bundle.name!r} is a {bundle.modality} model, not an image model")
        self.bundle = bundle
        self.dim = bundle.dim
        self.batch_size = batch_size
        run_threads = self._plan_runs(threads, prefetch, workers)
        pre = bundle.manifest["preprocessing"]
        self.resize = int(pre["resize_shorter"])
        self.crop = int(pre["center_crop"])
        self.interp = _INTERP[pre.get("interpolation", "bilinear")]
        self.scale = float(pre.get("scale", 1 / 255))
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self._gain, self._offset = self.scale / self.std, -self.mean / self.std  # (x * scale - mean) / std
        self.session = get_session(bundle.file("model.onnx"), bundle.manifest["files"]["model.onnx"], run_threads,
                                   runs=self.workers)
        self.input_name = self.session.get_inputs()[0].name
        self.output = bundle.manifest.get("output", "embedding")

    def _plan_runs(self, threads: int, prefetch: bool | None, workers: int | None) -> int:
        """Set ``workers`` and ``prefetch``; return the ORT threads of one run."""
        self.workers = max(1, min(threads, batch_workers(threads) if workers is None else int(workers)))
        # several workers already decode beside each other's model runs
        self.prefetch = self.workers == 1 and (overlap_decoding(threads) if prefetch is None else prefetch)
        return max(1, threads // self.workers)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image → normalised ``float32[3, crop, crop]`` (resize shorter side, centre crop).

        Scaling and normalisation are one fused multiply-add from the uint8 pixels into the output array
        (three float passes fewer than ``(x * scale - mean) / std``; the same values to float rounding).
        """
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        sx, sy = w / nw, h / nh
        # Resample only the source box the centre crop keeps (Pillow's filter still reads the pixels around the
        # box): the pixels of resize-then-crop to within one 8-bit level, without resampling what the crop
        # throws away or copying the crop (preprocessing 1.22x faster on 348x348 photos).
        img = img.resize((self.crop, self.crop), self.interp,
                         box=(left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy))
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
        With several ``workers`` (see :func:`batch_workers`), each worker thread decodes, preprocesses and embeds
        whole batches on its own single-threaded ONNX run (Pillow and ONNX Runtime release the GIL); inputs
        are cut into a multiple of ``workers`` batches (or ``n``) whose sizes differ by at most one. With one
        worker, where the model leaves a core free (``prefetch``, see :func:`overlap_decoding`), the next batch
        is decoded in a thread while ONNX Runtime embeds the current one. Either way the decode cost hides
        behind the model's.
        """
        n = len(sources)
        out = np.zeros((n, self.dim), dtype=np.float32)
        reasons: list[str | None] = [None] * n
        if self.workers > 1 and n > 1:
            # a multiple of ``workers`` batches of near-equal size: no worker is left with a last batch alone
            k = -(-n // self.batch_size)
            k = min(n, -(-k // self.workers) * self.workers)
            cuts = [n * j // k for j in range(k + 1)]
            self._encode_in_workers(sources, [range(a, b) for a, b in zip(cuts, cuts[1:], strict=False)],
                                    policy, reasons, out)
            return out, reasons
        chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        for ok, pixels in self._loaded_chunks(sources, chunks, policy, reasons):
            if pixels is not None:
                out[ok] = self.run(pixels)[0]
        return out, reasons

    def _encode_in_workers(self, sources: Sequence[str | bytes | None], chunks: list[range], policy: ImagePolicy,
                           reasons: list[str | None], out: np.ndarray) -> None:
        """Decode and embed ``chunks`` on ``workers`` threads, each chunk's rows written into ``out``."""

        def embed(idx: range) -> None:
            ok, pixels = self._load_chunk(sources, idx, policy, reasons)
            if pixels is not None:
                out[ok] = self.run(pixels)[0]

        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(chunks)), thread_name_prefix="pmatch-image")
        try:
            for future in [pool.submit(embed, idx) for idx in chunks]:
                future.result()
        finally:  # on an error, batches not yet started are dropped and the running ones finish
            pool.shutdown(wait=True, cancel_futures=True)

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
