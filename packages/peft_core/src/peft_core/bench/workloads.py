"""Models, inputs and the loss of one training step, per workload.

Workloads (random inputs from a fixed seed, the same for every method on a model):

* ``seq2seq`` (BART / T5 "with 36 visual tokens"): the encoder input is ``inputs_embeds = [E(text) ; V]`` where
  ``E`` is the model's own token embedding (so full fine-tuning back-propagates into it) and ``V`` are 36 random
  ``d``-wide vectors standing for the output of a visual projection (the projection itself is not part of the
  benchmarked model, so it is the same for every method); ``attention_mask`` covers text + visual tokens;
  ``labels`` of ``target_len`` tokens, ``decoder_input_ids`` = the labels shifted right after the decoder start
  token; loss = the model's LM cross-entropy. Presets that train a
  ``visual_embedding`` run on the VL variant (:mod:`peft_core.zoo_vl`: VL-BART / VL-T5, 36 region features of
  2048 and their boxes through VL-Adapter's visual embedding).
* ``encoder`` (BERT): ``input_ids`` + ``attention_mask``; loss = mean square of the last hidden states (a stand-in
  for a task loss: the memory and time of a step hardly depend on the head).
* ``clip``: text ids + 224 px images, CLIP's contrastive loss (``return_loss=True``).
* ``image``: images; loss = mean square of the model output. ``torch``: toy model on ids.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_core.bench.configs import BenchConfig, ModelSpec

Batch = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------------- tiny models
class ToyTransformer(nn.Module):
    """Embedding + ``nn.TransformerEncoderLayer`` blocks (d=32, 2 layers, batch first): a torch-only model for smoke
    tests (a ``ModuleList``, not ``nn.TransformerEncoder``, whose constructor imports ``torch._dynamo``)."""

    def __init__(self, vocab: int = 100, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
            for _ in range(layers))
        self.config = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


def _tiny(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        if name == "toy-transformer":
            return ToyTransformer()
        from peft_core.testing import MODELS as TINY

        model, _ = TINY[name]()
        return model

    return build


def builder_of(ref: str) -> Callable[[], nn.Module]:
    """The constructor named by a :attr:`ModelSpec.builder` reference (``zoo:``, ``vl:`` or ``tiny:``)."""
    kind, _, name = ref.partition(":")
    if kind == "zoo":
        from peft_core.zoo import MODELS as ZOO

        if name not in ZOO:
            raise ValueError(f"zoo model {name!r} is not registered; expected one of {sorted(ZOO)}")
        return ZOO[name][0]
    if kind == "vl":
        from peft_core.zoo_vl import VL_MODELS

        return VL_MODELS[name][0]
    if kind == "tiny":
        return _tiny(name)
    raise ValueError(f"builder {ref!r} is not allowed; expected 'zoo:NAME', 'vl:NAME' or 'tiny:NAME'")


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Construct without running weight initialisers (every parameter is overwritten by a saved state dict)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - transformers is in the models extra
        yield
        return
    with no_init_weights():
        yield


def build_model(spec: ModelSpec, *, vl: bool = False, device: str | torch.device = "cpu",
                weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """Build ``spec``'s model (the VL variant with ``vl``) with random weights, in eval mode.

    With ``weights`` (a ``torch.save``'d state dict of the same architecture) the constructor skips the weight
    initialisers and the saved values are loaded: the same weights as a normal build, in a fraction of the time.
    """
    ref = spec.vl_builder if vl else spec.builder
    if ref is None:
        raise ValueError(f"model {spec.name!r} has no VL variant")
    build = builder_of(ref)
    torch.manual_seed(seed)
    if weights is not None:
        with torch.device(device), skip_init():
            model = build()
        state = torch.load(weights, map_location=device, mmap=True, weights_only=True)
        model.load_state_dict(state, strict=True)
        del state
        if hasattr(model, "tie_weights"):  # skipped with the initialisers (transformers ties in init_weights)
            model.tie_weights()
        with torch.device("meta"):
            expected = _unique_numel(build())
        if _unique_numel(model) != expected:
            raise RuntimeError(f"{spec.name}: the model built from saved weights has {_unique_numel(model):,} "
                               f"parameters, a normal build {expected:,} (weights tied differently)")
    else:
        with torch.device(device):
            model = build()
    return model.eval()


def _unique_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------ inputs
def make_batch(spec: ModelSpec, cfg: BenchConfig, model: nn.Module, device: torch.device, seed: int = 0) -> Batch:
    """Random inputs of ``spec``'s workload at ``cfg``'s shape (fixed seed: identical for every method)."""
    g = torch.Generator().manual_seed(seed)
    b, t = cfg.batch, cfg.seq_len
    config = getattr(model, "config", None)
    out: Batch = {}
    if spec.workload in ("seq2seq", "encoder", "clip", "torch"):
        vocab = _vocab_size(model, config)
        out["input_ids"] = torch.randint(4, vocab, (b, t), generator=g)
        out["attention_mask"] = torch.ones(b, t, dtype=torch.long)
    if spec.workload == "seq2seq":
        vocab = _vocab_size(model, config)
        labels = torch.randint(4, vocab, (b, cfg.target_len), generator=g)
        start = getattr(config, "decoder_start_token_id", None)
        start = start if start is not None else (getattr(config, "pad_token_id", None) or 0)
        out["labels"] = labels
        out["decoder_input_ids"] = torch.cat([torch.full((b, 1), start, dtype=labels.dtype), labels[:, :-1]], dim=1)
        v = spec.visual_tokens
        if cfg.vl:
            out["vis_feats"] = torch.randn(b, v, 2048, generator=g)
            lo = torch.rand(b, v, 2, generator=g) * 0.5
            hi = lo + 0.1 + torch.rand(b, v, 2, generator=g) * 0.4
            out["vis_pos"] = torch.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], dim=-1)  # x1 x2 y1 y2
        else:
            out["visual"] = torch.randn(b, v, config.d_model, generator=g) * 0.02
    if spec.workload in ("clip", "image"):
        out["pixel_values"] = torch.randn(b, 3, spec.image_size, spec.image_size, generator=g)
    return {k: v.to(device) for k, v in out.items()}


def _vocab_size(model: nn.Module, config: Any) -> int:
    if config is not None:
        text = getattr(config, "text_config", None)
        vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
        if vocab:
            return int(vocab)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed
    return int(embed.weight.shape[0])


# -------------------------------------------------------------------------------------------------------- loss
def output_loss(output: Any) -> torch.Tensor:
    """The model's own loss if it computed one, else the mean square of its main output tensor."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    from peft_core.testing import output_tensor

    return output_tensor(output).float().pow(2).mean()


def _takes(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def forward_loss(spec: ModelSpec, model: nn.Module, batch: Batch) -> torch.Tensor:
    """One forward pass of ``spec``'s workload on ``model`` (a plain, injected or PEFT-wrapped model) -> loss."""
    w = spec.workload
    if w == "seq2seq":
        decoder = {"decoder_input_ids": batch["decoder_input_ids"], "labels": batch["labels"]}
        if "vis_feats" in batch:
            out = model(input_ids=batch["input_ids"], vis_feats=batch["vis_feats"], vis_pos=batch["vis_pos"],
                        **decoder)
        else:
            text = model.get_input_embeddings()(batch["input_ids"])
            embeds = torch.cat([text, batch["visual"].to(text.dtype)], dim=1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            out = model(inputs_embeds=embeds, attention_mask=mask, **decoder)
        return output_loss(out)
    if w == "encoder":
        return output_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    if w == "clip":
        return output_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pixel_values=batch["pixel_values"], return_loss=True))
    if w == "image":
        x = batch["pixel_values"]
        return output_loss(model(pixel_values=x) if _takes(model, "pixel_values") else model(x))
    if w == "torch":
        return output_loss(model(batch["input_ids"]))
    raise ValueError(f"workload {w!r} is not allowed; expected seq2seq, encoder, clip, image or torch")


@dataclass
class Job:
    """What one configuration trains: ``module`` (counted), ``params`` (optimised), ``loss(batch)``."""

    module: nn.Module
    params: list[nn.Parameter]
    loss: Callable[[Batch], torch.Tensor]
    train: bool = True
