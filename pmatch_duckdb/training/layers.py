"""Running part of a transformers encoder: its lower layers once (their output stored), its upper layers on
that output. The pair scorers' cpu recipes freeze the lower layers and train only the upper ones on stored states
(:mod:`.pair_model`'s cross-encoder per pair, :mod:`.siamese` per offer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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
