"""The paper's projection: ONE linear layer over [text, image, numeric, lexical] features, trained with a
symmetric InfoNCE loss (in-batch negatives, learnable temperature, large batches), exported to ONNX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def train_projection(x: np.ndarray, pos: np.ndarray, groups: np.ndarray, dim: int = 256, epochs: int = 40,
                     batch_size: int = 1024, lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                     hard_negatives: np.ndarray | None = None, threads: int | None = None,
                     progress: Callable[[int, float], None] | None = None) -> tuple[np.ndarray, float, list[float]]:
    """Train ``W`` (dim × F) so that positive pairs ``pos`` (int[n,2] rows of ``x``) are close.

    ``groups[i]`` is the product group of offer i: in-batch pairs of the same group are not used as
    negatives. ``hard_negatives`` (int[m,2]) are extra non-matching pairs whose right side joins the
    batch's candidate columns for its left side's anchor. Returns (W, temperature, loss history).
    Deterministic for a given seed. ``threads=1`` is the default used by ``train_matcher``: for these
    small matrices one thread was 4.8x faster than two on a busy 2-core machine (measured).
    """
    import torch

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    grp = torch.from_numpy(np.asarray(groups, dtype=np.int64))
    lin = torch.nn.Linear(x.shape[1], dim, bias=False)
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW(list(lin.parameters()) + [log_scale], lr=lr, weight_decay=weight_decay)
    hn_by_left: dict[int, list[int]] = {}
    for a, b in hard_negatives if hard_negatives is not None else []:
        hn_by_left.setdefault(int(a), []).append(int(b))
        hn_by_left.setdefault(int(b), []).append(int(a))
    history: list[float] = []
    n = len(pos)
    bs = min(batch_size, n)
    for epoch in range(epochs):
        order = rng.permutation(n)
        total, steps = 0.0, 0
        for s in range(0, n - bs + 1 if n >= bs else 1, bs):
            idx = order[s:s + bs]
            left, right = torch.from_numpy(pos[idx, 0]), torch.from_numpy(pos[idx, 1])
            extra = [rng.choice(hn_by_left[int(a)]) for a in pos[idx, 0] if int(a) in hn_by_left]
            cols = torch.cat([right, torch.as_tensor(extra, dtype=torch.long)]) if extra else right
            a = torch.nn.functional.normalize(lin(xt[left]), dim=-1)
            b = torch.nn.functional.normalize(lin(xt[cols]), dim=-1)
            scale = log_scale.exp().clamp(max=100.0)
            logits = scale * a @ b.T
            same = grp[left][:, None] == grp[cols][None, :]
            eye = torch.zeros_like(same)
            eye[torch.arange(len(idx)), torch.arange(len(idx))] = True
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            target = torch.arange(len(idx))
            loss_ab = torch.nn.functional.cross_entropy(logits, target)
            sq = logits[:, : len(idx)]
            loss_ba = torch.nn.functional.cross_entropy(sq.T, target)
            loss = (loss_ab + loss_ba) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        history.append(total / max(steps, 1))
        if progress:
            progress(epoch, history[-1])
    return lin.weight.detach().numpy().copy(), float(1.0 / log_scale.detach().exp()), history


def export_projection_onnx(w: np.ndarray, path: Path) -> None:
    """ONNX graph ``features float32[batch, F] → embedding float32[batch, D]`` (L2-normalised)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, f = w.shape
    weight = numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32), name="W")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), name="axes")
    eps = numpy_helper.from_array(np.array(1e-12, dtype=np.float32), name="eps")
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["proj"]),
        helper.make_node("Mul", ["proj", "proj"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
        helper.make_node("Max", ["ss", "eps"], ["ss_eps"]),
        helper.make_node("Sqrt", ["ss_eps"], ["norm"]),
        helper.make_node("Div", ["proj", "norm"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "pmatch_projection",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])],
        initializer=[weight, axes, eps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pmatch-duckdb")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
