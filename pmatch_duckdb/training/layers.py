"""Running part of a transformers encoder: its lower layers once (their output stored), its upper layers on
that output. The pair scorers' cpu recipes freeze the lower layers and train only the upper ones on stored states
(:mod:`.pair_model`'s cross-encoder per pair, :mod:`.siamese` per offer)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np


def layer_box(bert):  # noqa: ANN001, ANN202
    """The module holding an encoder's ``layer`` list (DistilBERT keeps it under ``transformer``)."""
    return bert.encoder if hasattr(bert, "encoder") else bert.transformer


def encoder_layers(bert) -> list:  # noqa: ANN001
    """The transformer layers of an encoder (DistilBERT keeps them under ``transformer``, the others ``encoder``)."""
    return list(layer_box(bert).layer)


@contextmanager
def only_layers(bert, layers: slice, hidden=None) -> Iterator[None]:  # noqa: ANN001
    """For the block, ``bert`` runs only its transformer layers ``layers``; with ``hidden`` (stored output of the
    layers below) its embeddings module hands back ``hidden`` instead of embedding the input. The encoder's own
    forward does the rest — the attention mask in its own form, MPNet's relative position bias (from the sequence
    length alone) — so one code path serves every architecture :mod:`.pair_base` reads. Same parameters,
    swapped back afterwards."""
    import torch

    class _Given(torch.nn.Module):
        def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            return hidden

    box, kept, emb = layer_box(bert), layer_box(bert).layer, bert.embeddings
    box.layer = torch.nn.ModuleList(list(kept)[layers])
    if hidden is not None:
        bert.embeddings = _Given()
    try:
        yield
    finally:
        box.layer, bert.embeddings = kept, emb


def store_states(lengths: Sequence[int], run: Callable[[np.ndarray], tuple], batch: int = 64) -> list:
    """The frozen part's output for every item, stored unpadded. Items go through ``run`` in batches of ``batch``,
    shortest first (``lengths``: a length to sort by). ``run(idx)`` returns ``(hidden[b, width, d], lengths[b])``
    for the items ``idx``. Under the attention mask the pads change no real token's state, so
    :func:`padded_states` can re-pad any batch from these."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    states: list = [None] * len(order)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        h, lens = run(idx)
        for j, i in enumerate(idx):
            states[i] = h[j, :int(lens[j])].clone()
    return states


def padded_states(states: list, idx: Sequence[int], device: str):  # noqa: ANN202
    """A batch of stored states (:func:`store_states`), zero-padded to its longest item, and its attention mask."""
    import torch

    width = max(len(states[i]) for i in idx)
    hid = torch.zeros((len(idx), width, states[idx[0]].shape[1]), device=device)
    mask = torch.zeros((len(idx), width), dtype=torch.int64, device=device)
    for j, i in enumerate(idx):
        hid[j, :len(states[i])] = states[i]
        mask[j, :len(states[i])] = 1
    return hid, mask
