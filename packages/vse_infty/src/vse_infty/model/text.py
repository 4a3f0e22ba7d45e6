"""Text tower: a transformers encoder, a linear projection to the joint space, GPO pooling and l2 normalisation.

Upstream woodfrog/vse_infty@c9943b2:lib/encoders.py:EncoderText (Paranioar/UniPT@3fa457d987 keeps it)::

    h      = BERT(input_ids, attention_mask = (input_ids != 0))[0]      (B, L, 768)
    x      = Linear(768, E)(h)                                           (no linear with UniPT: the side network's
                                                                          (B, L, E) output replaces h)
    pooled = GPO(x, lengths)                                             lengths = tokens incl. [CLS] / [SEP]
    emb    = l2norm(pooled)                                              (unless no_txtnorm)

Here the encoder is any transformers encoder model (``AutoModel``): a local directory, a config dict (tiny test
encoders), or BERT-base's architecture; ``lengths = attention_mask.sum(1)`` (right-padded batches: the same numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vse_infty.model.gpo import GPO
from vse_infty.model.ops import l2norm


def build_text_backbone(text_encoder: str | None, text_config: dict[str, Any] | None, *,
                        load_weights: bool = True) -> nn.Module:
    """The transformers encoder of the text tower (``load_weights=False``: the architecture only, random weights).

    ``text_encoder``: a local model directory; ``text_config``: a config dict (``model_type`` defaults to ``bert``);
    neither: BERT-base (``BertConfig()``, the bert-base-uncased architecture).
    """
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if text_encoder is not None:
        path = Path(text_encoder)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.text_encoder={text_encoder!r}: expected a local transformers model "
                                    "directory with config.json and the weights (e.g. a bert-base-uncased download)")
        if load_weights:
            return AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    if text_config is not None:
        options = dict(text_config)
        model_type = options.pop("model_type", "bert")
        try:
            config = AutoConfig.for_model(model_type, **options)
        except ValueError as exc:
            raise ValueError(f"model.text_config: {exc}") from None
        return AutoModel.from_config(config)
    return BertModel(BertConfig())


class TextEncoder(nn.Module):
    """``forward(input_ids (B, L), attention_mask (B, L)) -> (B, E)``.

    ``side_output=True``: a peft_core side network (UniPT) replaces the encoder's ``last_hidden_state`` with
    ``(B, L, E)`` features, so there is no ``linear``.
    """

    def __init__(self, backbone: nn.Module, embed_size: int, gpo_dim: int = 32, *, side_output: bool = False,
                 no_txtnorm: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_size = embed_size
        self.side_output = side_output
        self.no_txtnorm = no_txtnorm
        self.linear = None if side_output else nn.Linear(self.hidden_size, embed_size)
        self.gpool = GPO(gpo_dim, gpo_dim)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def num_hidden_states(self) -> int:
        """Embedding output + one per layer (BERT-base: 13)."""
        return int(self.backbone.config.num_hidden_layers) + 1

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(input_ids.shape)} and "
                             f"{tuple(attention_mask.shape)}")
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out[0]
        if self.side_output and hidden.shape[-1] != self.embed_size:
            raise RuntimeError(f"TextEncoder(side_output=True) expects a side network's (B, L, {self.embed_size}) "
                               f"output, got {tuple(hidden.shape)}; no UniPT adapter is attached")
        lengths = attention_mask.sum(1)
        features = hidden if self.linear is None else self.linear(hidden)
        pooled, _ = self.gpool(features, lengths)
        return pooled if self.no_txtnorm else l2norm(pooled, dim=-1)
