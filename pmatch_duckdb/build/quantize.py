"""int8 variants of the default encoder bundles (``pmatch models build --int8``).

- text (``minilm-l6-v2-int8``): ONNX Runtime *dynamic* quantization — int8 weights quantized per output
  channel, activations quantized per batch at run time (the weight MatMuls of the attention projections and
  the feed-forward blocks; the attention-score MatMuls, LayerNorms, pooling and normalisation stay fp32);
  no calibration data needed. The matrix most sensitive to quantization (:data:`TEXT_KEEP_FP32`: the first
  layer's feed-forward output projection, measured one matrix at a time) stays fp32 too.
- image (``efficientnet-lite0-int8``): *static* quantization (QOperator format) — int8 weights (per channel) and
  activation ranges calibrated on product photos rendered by :mod:`pmatch_duckdb.demo.synthetic`
  (generated at build time: the build never reads third-party data). The ReLU6 ``Clip`` after each
  convolution and the residual ``Add`` are quantized too (:data:`IMAGE_OPS`): the quantizer folds each Clip into
  its convolution's output range and the Adds become ``QLinearAdd``, so activations stay uint8 from the stem
  to the pooling. Quantizing the convolutions alone left a dequantize -> fp32 Clip -> quantize round trip after
  every convolution, which took 45 % of the int8 model's time and, with MinMax ranges instead of [0, 6],
  moved the embeddings further from fp32 (benchmarks/README.md, "image int8: the Clip round trips"). The stem
  convolution reads its RGB input padded with a zero channel (:func:`pad_input_channels`), which puts it on ORT's
  fast symmetric int8 kernel and changes no output.

Each is its own bundle (own name, manifest and file hashes, like every other bundle); the fp32
bundles stay the default and a connection opts in with ``pm.connect(text_model="minilm-l6-v2-int8",
image_model="efficientnet-lite0-int8")`` or ``pm_embed_text(t, 'minilm-l6-v2-int8')``. The
manifest records the fp32 graph it was made from; rebuilding the fp32 bundle makes the int8 one
out of date (``pmatch models build --int8`` then rebuilds it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..bundles import Bundle, find_bundle
from .common import finish_bundle, package_version

RECIPE = 5  # bump whenever the quantization recipe changes (2: images in QOperator format; 3: text per-channel
# weights, first layer's feed-forward output projection kept fp32; 4: images also quantize Clip and Add; 5: the
# image stem convolution reads its RGB input padded with a zero channel)
SUFFIX = "-int8"
CALIBRATION_IMAGES = 96
CALIBRATION_SEED = 7
# Text weight MatMuls left in fp32, by node-name suffix. Quantizing one MatMul at a time (the others fp32) and
# measuring the mean 1 - cosine to the fp32 embeddings of product titles, the first encoder layer's
# feed-forward output projection was the most sensitive matrix by 2x (benchmarks/README.md, "int8 recipe");
# it is 1/18 of the weight multiply-adds.
TEXT_KEEP_FP32 = ("/encoder/layer.0/output/dense/MatMul",)
# Image ops quantized: convolutions and the head, plus the ReLU6 Clips (folded into their convolution) and the
# residual Adds (QLinearAdd), so no fp32 op sits between two int8 convolutions.
IMAGE_OPS = ["Conv", "MatMul", "Gemm", "Clip", "Add"]
# ONNX Runtime's fast symmetric int8 convolution (MlasConvSym) takes input channels in multiples of 4; an RGB stem
# (3 channels) falls back to the generic im2col kernel, slower than the fp32 stem. Padding the input with a zero
# channel (and the stem's weights with a zero slice) changes no output and puts the stem on the fast kernel: the
# whole EfficientNet-Lite0 model 2.09x -> 2.15x fp32 (benchmarks/README.md, "Images: only the crop's box
# resampled, and an int8 stem on the fast kernel").
CHANNEL_ALIGN = 4


def int8_name(fp32_name: str) -> str:
    """Bundle name of the int8 variant of ``fp32_name``."""
    return f"{fp32_name}{SUFFIX}"


def _manifest_from(src: Bundle, method: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in src.manifest.items() if k not in ("files", "created", "name", "recipe")}
    return {**keep, "name": int8_name(src.name), "recipe": RECIPE,
            "quantization": {**method, "source_bundle": src.name,
                             "source_sha256": src.manifest["files"]["model.onnx"],
                             "onnxruntime": package_version("onnxruntime")}}


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """ONNX Runtime's quantizer saves a temporary external-data file (``<uuid>.data``, the size of the
    model) in the current directory: run it inside the build's scratch directory instead."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _preprocessed(src: Path, work: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "pre.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs; plain inference then
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def kept_fp32(model_path: Path, suffixes: tuple[str, ...] = TEXT_KEEP_FP32) -> list[str]:
    """Names of the nodes of ``model_path`` that end with one of ``suffixes`` (one node each, or ValueError:
    a re-exported graph whose names changed must not silently quantize what the recipe keeps fp32)."""
    import onnx

    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    out = []
    for suf in suffixes:
        hit = [n for n in names if n.endswith(suf)]
        if len(hit) != 1:
            raise ValueError(f"{model_path.name}: {len(hit)} nodes end with {suf!r} (expected 1)")
        out += hit
    return out


def quantize_text(src: Bundle, bundle_dir: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of a text bundle's ``model.onnx`` (tokenizer and manifest fields copied):
    per-channel int8 weights, the nodes of :data:`TEXT_KEEP_FP32` left in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bundle_dir = Path(bundle_dir).resolve()
    with tempfile.TemporaryDirectory() as work, _cwd(Path(work)):
        pre = _preprocessed(src.file("model.onnx"), Path(work))
        keep = kept_fp32(pre)
        quantize_dynamic(str(pre), str(bundle_dir / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep)
    tok = src.manifest["preprocessing"].get("tokenizer", "tokenizer.json")
    shutil.copyfile(src.file(tok), bundle_dir / tok)
    return finish_bundle(bundle_dir, _manifest_from(src, {
        "method": "dynamic", "weights": "int8 (per channel)", "activations": "uint8 per batch (run time)",
        "ops": ["MatMul", "Gemm"], "fp32_nodes": keep}))


def calibration_photos(out_dir: Path, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> list[Path]:
    """``n`` product photos (studio catalog shots and noisy supplier-feed shots) rendered into ``out_dir``."""
    from ..demo.synthetic import generate

    data = generate(out_dir, n_products=max(1, n // 3), seed=seed, shots_per_offer=2)
    paths = [Path(p) for o in list(data.catalog) + list(data.feed) for p in o["images"]]
    return paths[:n]


class _PhotoReader:
    """ONNX Runtime calibration data reader: preprocessed photos in batches."""

    def __init__(self, pixels: np.ndarray, input_name: str, batch: int = 8) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: pixels[s:s + batch]} for s in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def pad_input_channels(model_path: Path, out_path: Path, align: int = CHANNEL_ALIGN) -> int | None:
    """Write ``model_path`` to ``out_path`` with its image input padded by zero channels up to a multiple of
    ``align`` right where the stem convolution reads it, the stem's weights padded with zero input slices to
    match (outputs unchanged: a zero weight times anything adds nothing). Returns the padded channel count, or
    None (nothing written) where the graph is not input -> [Pad] -> Conv, or needs no padding."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(model_path))
    g = m.graph
    init = {i.name: i for i in g.initializer}
    inp = g.input[0].name

    def consumers(name: str) -> list[Any]:
        return [n for n in g.node if name in n.input]

    dims = g.input[0].type.tensor_type.shape.dim
    first = consumers(inp)
    if len(dims) != 4 or len(first) != 1:
        return None
    node = first[0]
    # e.g. TF-style "same" padding in front of the stem: whatever it fills the new channel's border with meets
    # zero weights (a non-finite fill would not: the caller compares the outputs before using the padded graph)
    if node.op_type == "Pad":
        if len(consumers(node.output[0])) != 1:
            return None
        node = consumers(node.output[0])[0]
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type != "Conv" or group != 1 or node.input[1] not in init:
        return None
    w = numpy_helper.to_array(init[node.input[1]])
    if w.ndim != 4 or w.shape[1] != dims[1].dim_value or w.shape[1] % align == 0:
        return None  # (a front Pad that pads channels itself leaves the weights another count than the input)
    extra = align - w.shape[1] % align
    init[node.input[1]].CopyFrom(numpy_helper.from_array(
        np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1), node.input[1]))
    pads, padded = f"{inp}_channel_pads", f"{inp}_channels_padded"
    g.initializer.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), pads))
    first[0].input[list(first[0].input).index(inp)] = padded
    g.node.insert(0, helper.make_node("Pad", [inp, pads], [padded], name="pmatch_channel_pad", mode="constant"))
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))
    return int(w.shape[1] + extra)


def _same_outputs(a: Path, b: Path, feed: dict[str, np.ndarray]) -> bool:
    """Whether two graphs give the same outputs (to float rounding) on ``feed``."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed) for p in (a, b)]
    return all(np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True) for x, y in zip(*runs, strict=True))


def quantize_image(src: Bundle, bundle_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Static int8 (QOperator format, per-channel weights) quantization of an image bundle, calibrated on rendered photos."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from PIL import Image

    from ..encoders.image import ImageEncoder

    bundle_dir = Path(bundle_dir).resolve()
    enc = ImageEncoder(src, threads=1)
    with tempfile.TemporaryDirectory() as work, _cwd(Path(work)):
        photos = calibration_photos(Path(work) / "calibration")
        log(f"{int8_name(src.name)}: calibrating on {len(photos)} generated product photos")
        pixels = np.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in photos]).astype(np.float32)
        graph = src.file("model.onnx")
        padded = Path(work) / "padded.onnx"
        channels = pad_input_channels(graph, padded)
        if channels is not None and not _same_outputs(graph, padded, {enc.input_name: pixels[:4]}):
            log(f"{int8_name(src.name)}: the stem's padded input changed the outputs; quantizing it unpadded")
            channels = None
        pre = _preprocessed(graph if channels is None else padded, Path(work))
        quantize_static(str(pre), str(bundle_dir / "model.onnx"), _PhotoReader(pixels, enc.input_name),
                        quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=IMAGE_OPS)
    return finish_bundle(bundle_dir, _manifest_from(src, {
        "method": "static", "format": "QOperator", "weights": "int8 (per channel)", "activations": "uint8",
        "ops": IMAGE_OPS, "stem_input_channels": channels,
        "calibration": {"images": len(photos), "source": "pmatch_duckdb.demo.synthetic rendered product photos",
                        "seed": CALIBRATION_SEED, "method": "MinMax"}}))


def quantize_bundle(src: Bundle, bundle_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The int8 variant of a text or image bundle (dynamic for text, static for images)."""
    if src.modality == "text":
        return quantize_text(src, bundle_dir)
    if src.modality == "image":
        return quantize_image(src, bundle_dir, log)
    raise ValueError(f"bundle {src.name!r} is a {src.modality} model; int8 variants exist for text and image bundles")


def int8_outdated(manifest: dict[str, Any], home: Path | None) -> str | None:
    """Why an intact int8 bundle must be rebuilt (other recipe, or its fp32 source changed), or None."""
    q = manifest.get("quantization", {})
    if manifest.get("recipe") != RECIPE:
        return f"quantization recipe {manifest.get('recipe')!r} != {RECIPE}"
    src = find_bundle(q.get("source_bundle", ""), home)
    if src.manifest["files"].get("model.onnx") != q.get("source_sha256"):
        return f"made from another build of {src.name}"
    return None


def describe(manifest: dict[str, Any]) -> str:
    """One line about a bundle's quantization (for logs)."""
    return json.dumps(manifest.get("quantization", {}), sort_keys=True)
