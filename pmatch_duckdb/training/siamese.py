"""The siamese pair scorer: MiniLM fine-tuned with a supervised contrastive loss on labelled match groups.

R-SupCon (Peeters, Bizer & Glavaš 2022) in our setting: every training offer is serialised as for the
cross-encoder, offers joined by labelled matches form a group, and a batch holds whole groups. Each epoch the
groups are batched with their nearest groups by the current embedding (centroid cosine), so siblings that
differ in one suffix or model number meet in one batch and the loss has to push them apart. Offers in no
labelled match are groups of one: negatives for everybody, never anchors.

At match time the model embeds one offer (``pair_model.onnx``: input ids → L2-normalised mean-pooled state) and
:class:`~pmatch_duckdb.pair_scorer.SiameseScorer` turns two embeddings into a logit (cosine / temperature): one
pass per distinct offer instead of one per pair (each with the whole ``max_len``). The validation pairs pick the epoch, as for the cross-encoder.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import PmatchError
from .layers import encoder_layers, layer_box, only_layers, padded_states, store_states
from .pair_base import PairBase
from .pair_model import (
    ONNX_TOLERANCE,
    EpochKeeper,
    PairTrainConfig,
    minilm_dir,
    resolve_device,
    torch_threads,
)


class SiameseEncoder:  # built lazily as a torch.nn.Module subclass (torch is optional)
    """Factory for the torch module: encoder → masked mean pool → L2 normalisation (all-MiniLM-L6-v2's own head).
    The encoder: MiniLM-L6 (default), a tiny random BERT (tests), or a :class:`~.pair_base.PairBase` folder's."""

    @staticmethod
    def build(bert_dir: Path | None = None, tiny_config: dict | None = None, seed: int = 0,
              base: PairBase | None = None):
        import torch

        from .pair_model import CrossEncoder

        if base is not None and base.folder is not None and tiny_config is None:
            from .pair_base import load_base_model

            torch.manual_seed(seed)
            bert, token_types = load_base_model(base), base.token_types
        else:
            bert, token_types = CrossEncoder.build(bert_dir, tiny_config, seed).bert, True  # quiet, no pooler

        class _Siamese(torch.nn.Module):
            def __init__(self, bert: torch.nn.Module, token_types: bool) -> None:
                super().__init__()
                self.bert = bert
                self.token_types = token_types  # RoBERTa-style encoders and DistilBERT take none

            def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001, ANN201
                extra = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
                return mean_pool_normalize(h, attention_mask)

        return _Siamese(bert, token_types)


def mean_pool_normalize(h, mask):  # noqa: ANN001, ANN201
    """The L2-normalised mean of the token states ``h`` under ``mask`` (the siamese head)."""
    import torch

    m = mask.unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)


def lower_states(model, tok, texts: Sequence[str], n_frozen: int, device: str) -> list:  # noqa: ANN001
    """Each text's output of the embeddings and the lower ``n_frozen`` layers (eval mode, no gradients), stored
    unpadded (:func:`~.layers.store_states`; :func:`upper_embed` re-pads a batch from these)."""
    import torch

    def run(idx: np.ndarray) -> tuple:
        encs = tok.encode_batch([texts[i] for i in idx])
        ids = torch.tensor([e.ids for e in encs], dtype=torch.int64, device=device)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64, device=device)
        extra = {"token_type_ids": torch.zeros_like(ids)} if model.token_types else {}
        return model.bert(input_ids=ids, attention_mask=mask, **extra).last_hidden_state, mask.sum(1).tolist()

    model.eval()
    with torch.no_grad(), only_layers(model.bert, slice(0, n_frozen)):
        return store_states([len(t) for t in texts], run)


def upper_embed(model, states: list, idx: Sequence[int], n_frozen: int, device: str):  # noqa: ANN001, ANN201
    """Embeddings of the texts ``idx`` from their stored lower states: the upper layers and the siamese head (in
    the module's current train/eval mode; gradients flow into the upper layers)."""
    hid, mask = padded_states(states, idx, device)
    with only_layers(model.bert, slice(n_frozen, None), hidden=hid):
        h = model.bert(inputs_embeds=hid, attention_mask=mask).last_hidden_state
    return mean_pool_normalize(h, mask)


def _embed_stored(model, states: list, n_frozen: int, device: str, batch: int = 128) -> np.ndarray:  # noqa: ANN001
    """float32[n, d] embeddings of every stored text (eval mode, no gradients), batched by length."""
    import torch

    model.eval()
    order = np.argsort([len(s) for s in states], kind="stable")
    out = np.zeros((len(states), 0), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(states), batch):
            idx = order[s:s + batch]
            v = upper_embed(model, states, idx, n_frozen, device).float().cpu().numpy()
            if out.shape[1] == 0:
                out = np.zeros((len(states), v.shape[1]), dtype=np.float32)
            out[idx] = v
    return out


def _tokenizer(tokenizer_json: Path, max_len: int, pad_id: int = 0):  # noqa: ANN202
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
    return tok


def _encode(model, tok, texts: Sequence[str], device: str):  # noqa: ANN001, ANN202
    import torch

    encs = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encs], dtype=torch.int64, device=device)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64, device=device)
    return model(ids, mask, torch.zeros_like(ids))


def embed_texts(model, tok, texts: Sequence[str], device: str = "cpu", batch: int = 128) -> np.ndarray:  # noqa: ANN001
    """float32[n, d] embeddings (eval mode, no gradients; the caller restores train mode)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            out.append(_encode(model, tok, texts[s:s + batch], device).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def hard_batches(emb: np.ndarray, groups: np.ndarray, batch_groups: int, rng: random.Random) -> list[np.ndarray]:
    """Batches of offer indices: each batch is a random group plus its nearest unused groups by centroid cosine
    (``batch_groups`` groups in all); every offer lands in exactly one batch."""
    uniq, inv = np.unique(groups, return_inverse=True)
    cen = np.zeros((len(uniq), emb.shape[1]), dtype=np.float64)
    np.add.at(cen, inv, emb)
    cen /= np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    unused = np.ones(len(uniq), dtype=bool)
    order = list(range(len(uniq)))
    rng.shuffle(order)
    out = []
    for g in order:
        if not unused[g]:
            continue
        unused[g] = False
        sims = cen @ cen[g]
        sims[~unused] = -np.inf
        k = min(batch_groups - 1, int(unused.sum()))
        near = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        unused[near] = False
        out.append(np.concatenate([members[g], *[members[j] for j in near]]))
    return out


def supcon_loss(v, labels, temperature: float):  # noqa: ANN001, ANN201
    """Supervised contrastive loss (Khosla et al. 2020) over one batch of normalised embeddings; anchors without
    a positive in the batch add nothing. None when no anchor has one."""
    import torch

    n = v.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=v.device)
    sim = (v @ v.T / temperature).masked_fill(eye, -1e9)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.sum(1) > 0
    if not bool(has.any()):
        return None
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per = -(logp * pos).sum(1) / pos.sum(1).clamp(min=1)
    return per[has].mean()


def train_siamese_encoder(texts: Sequence[str], groups: np.ndarray, tokenizer_json: Path, cfg: PairTrainConfig,
                          bert_dir: Path | None = None, tiny_config: dict | None = None,
                          log: Callable[[str], None] | None = None,
                          valid: tuple[Sequence[str], Sequence[str], np.ndarray] | None = None,
                          base: PairBase | None = None, pad_id: int = 0):
    """Fine-tune the bi-encoder on offers ``texts`` with match-group ids ``groups`` (supervised contrastive loss,
    temperature ``cfg.temperature``, ``cfg.batch_groups`` nearest groups per batch). ``valid``: ``(a, b, y)``
    pairs whose average precision (of the cosine) after each epoch picks the returned model; ``cfg.patience``
    stops training after that many epochs without a gain. Returns ``(module, info)``, the module in eval mode on
    the CPU. Deterministic for a seed and thread count on the CPU (``cfg.threads``; None: every core). ``base``: the
    encoder to start from (None: MiniLM-L6), ``tokenizer_json`` its tokenizer, padding with ``pad_id``."""
    with torch_threads(cfg.threads):
        return _train_siamese(texts, groups, tokenizer_json, cfg, bert_dir, tiny_config, log, valid, base, pad_id)


def _train_siamese(texts, groups, tokenizer_json, cfg, bert_dir, tiny_config, log, valid, base,  # noqa: ANN001, ANN202
                   pad_id):
    import torch

    from ..decision import average_precision

    device = resolve_device(cfg.device)
    model = SiameseEncoder.build(bert_dir, tiny_config or cfg.tiny_bert, cfg.seed, base).to(device)
    layers = encoder_layers(model.bert)
    n_frozen = min(max(0, cfg.freeze_layers), len(layers))
    # frozen: the embeddings, the lower layers and what the encoder shares between its layers (MPNet's relative
    # position bias), so that stored lower states stay what those layers compute
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    shared = [p for p in layer_box(model.bert).parameters() if id(p) not in in_layers]
    for p in [*model.bert.embeddings.parameters(), *shared, *(q for la in layers[:n_frozen] for q in la.parameters())] \
            if n_frozen > 0 else []:
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # no classification head here: freezing every layer leaves nothing to fine-tune
        raise PmatchError(f"the siamese pair scorer has nothing to fine-tune: freeze_layers={cfg.freeze_layers} "
                          f"freezes every one of its encoder's {len(layers)} layers "
                          f"(--pair-freeze-layers; the siamese recipes freeze none)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tok = _tokenizer(tokenizer_json, cfg.max_len, pad_id)
    texts = list(texts)
    groups = np.asarray(groups)
    labels = np.unique(groups, return_inverse=True)[1]
    rng = random.Random(cfg.seed)
    keeper = EpochKeeper(model, cfg, "pair model (siamese)", log, valid is not None)
    t0 = keeper.t0
    va_y = np.zeros(0) if valid is None else np.asarray(valid[2], dtype=np.float64)
    va_texts = list(dict.fromkeys([*valid[0], *valid[1]])) if valid is not None else []
    va_pos = {t: i for i, t in enumerate(va_texts)}

    # frozen lower layers: run once per offer (eval mode) and train the upper layers on their stored output
    pre = cfg.precompute and n_frozen > 0
    states: list = []
    va_states: list = []
    if pre:
        states, va_states = (lower_states(model, tok, t, n_frozen, device) for t in (texts, va_texts))
        if log:
            log(f"pair model (siamese): the embeddings and the lower {n_frozen} of {len(layers)} layers (frozen) ran "
                f"once for {len(texts):,} training + {len(va_texts):,} validation offers; each epoch runs the "
                f"{len(layers) - n_frozen} above ({time.perf_counter() - t0:.0f}s, {device})")

    def embed_all(which: list, stored: list) -> np.ndarray:
        return _embed_stored(model, stored, n_frozen, device) if pre else embed_texts(model, tok, which, device)

    def valid_ap() -> float:
        e = embed_all(va_texts, va_states)
        ia = np.array([va_pos[t] for t in valid[0]], dtype=np.int64)
        ib = np.array([va_pos[t] for t in valid[1]], dtype=np.int64)
        return average_precision(np.einsum("ij,ij->i", e[ia], e[ib]).astype(np.float64), va_y)

    step, stopped = 0, False
    for epoch in range(cfg.epochs):
        batches = hard_batches(embed_all(texts, states), labels, cfg.batch_groups, rng)
        model.train()
        run, counted = 0.0, 0
        for idx in batches:
            v = (upper_embed(model, states, idx, n_frozen, device) if pre
                 else _encode(model, tok, [texts[i] for i in idx], device))
            loss = supcon_loss(v, torch.from_numpy(labels[idx]).to(device), cfg.temperature)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            run += float(loss.detach())
            counted += 1
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = True
                break
        if keeper.end_epoch(epoch, run / max(1, counted), valid_ap() if valid is not None else None, step, stopped):
            break
    info = {"steps": step, "stopped_early": stopped, "offers": len(texts), "groups": int(len(np.unique(labels))),
            "frozen_layers": n_frozen, "precomputed_frozen_layers": bool(pre), **keeper.finish(device)}
    return model, info


def torch_embeddings(model, tokenizer_json: Path, max_len: int, texts: Sequence[str],  # noqa: ANN001
                     pad_id: int = 0) -> np.ndarray:
    """The torch module's embeddings (what the ONNX graph is checked against)."""
    return embed_texts(model, _tokenizer(tokenizer_json, max_len, pad_id), texts)


def export_siamese_encoder(model, out_dir: Path, tokenizer_json: Path, max_len: int,  # noqa: ANN001
                           check_texts: Sequence[str], pad_id: int = 0) -> float:
    """Write ``pair_model.onnx`` (output ``embedding``; inputs ``input_ids``, ``attention_mask`` and, where the
    encoder takes them, ``token_type_ids``) + ``pair_tokenizer.json`` into ``out_dir``; check onnxruntime against
    torch on ``check_texts`` (unpadded, as the scorer runs them) and return the max |difference| of the embeddings
    (error if above 1e-4)."""
    import onnxruntime as ort
    import torch

    from ..build.common import export_onnx

    tok = _tokenizer(tokenizer_json, max_len, pad_id)
    encs = tok.encode_batch(["COL title VAL a b c", "COL title VAL x y z w v"])
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    path = out_dir / "pair_model.onnx"
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if model.token_types else [])]
    seq = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "token_type_ids": {0: "batch", 1: "seq"}}
    export_onnx(model, (ids, mask, torch.zeros_like(ids))[:len(names)], path, names, ["embedding"],
                {**{n: seq[n] for n in names}, "embedding": {0: "batch"}})
    if Path(tokenizer_json).resolve() != (out_dir / "pair_tokenizer.json").resolve():
        shutil.copyfile(tokenizer_json, out_dir / "pair_tokenizer.json")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = torch_embeddings(model, tokenizer_json, max_len, check_texts, pad_id)
    got = []
    for e in tok.encode_batch(list(check_texts)):
        n = sum(e.attention_mask)
        ids = np.asarray([e.ids[:n]], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        got.append(sess.run(["embedding"], {k: feed[k] for k in names})[0][0])
    diff = float(np.max(np.abs(np.asarray(got) - want))) if len(want) else 0.0
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"siamese pair model ONNX export differs from torch by {diff:.2e} (> {ONNX_TOLERANCE})")
    return diff


def match_groups(n_offers: int, pos_a: np.ndarray, pos_b: np.ndarray) -> np.ndarray:
    """Group id per offer index ``0..n_offers-1``: offers joined by the given match pairs share one."""
    from ..clusters import DisjointSet

    ds = DisjointSet()
    for i in range(n_offers):
        ds.find(i)
    for a, b in zip(pos_a.tolist(), pos_b.tolist(), strict=True):
        ds.union(a, b)
    roots = [ds.find(i) for i in range(n_offers)]
    return np.unique(np.asarray(roots), return_inverse=True)[1]


__all__ = ["SiameseEncoder", "export_siamese_encoder", "hard_batches", "match_groups", "minilm_dir", "supcon_loss",
           "train_siamese_encoder"]
