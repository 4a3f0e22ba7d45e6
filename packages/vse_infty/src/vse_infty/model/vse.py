"""The VSE-infty dual encoder: image tower + text tower -> l2-normalised joint embeddings.

Upstream woodfrog/vse_infty@42892f0:lib/vse.py:VSEModel (``forward_emb``) and Paranioar/UniPT@3fa457d987:
VSE-infty/lib/vse.py. Similarity of image ``i`` and caption ``j`` is ``img_emb[i] . cap_emb[j]``
(:class:`~vse_infty.model.loss.ContrastiveLoss`, evaluation). Batches are dicts of tensors:

* image part, raw images: ``{"images": Float[B, 3, H, W]}`` (ImageNet-normalised); precomputed regions:
  ``{"features": Float[B, K, D], "feature_lengths": Long[B]}``;
* text part: ``{"input_ids": Long[B, L], "attention_mask": Long[B, L]}`` ([CLS] .. [SEP], right-padded).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft_core import iter_layers
from peft_core.tuners.unipt import UniPTLayer
from torch import Tensor, nn

from vse_infty.model.config import MethodConfig, ModelConfig
from vse_infty.model.image import ImageEncoder, PrecompImageEncoder
from vse_infty.model.text import TextEncoder

TOWERS = ("image", "text")


def _take(batch: Mapping[str, Tensor], key: str, expected: str) -> Tensor:
    try:
        value = batch[key]
    except KeyError:
        raise KeyError(f"batch has no {key!r} (expected {expected}); it has {sorted(batch)}") from None
    if not isinstance(value, Tensor):
        raise TypeError(f"batch[{key!r}] is a {type(value).__name__}; expected a tensor {expected}")
    return value


class VSEModel(nn.Module):
    """``encode_images(batch) -> (B, E)``, ``encode_texts(batch) -> (B, E)``, ``forward(batch) -> (img, cap)``.

    Built by :func:`vse_infty.model.build.build_model` (which applies the tuning method). ``train(mode)`` keeps the
    CNN backbone's BatchNorms in eval mode (``model.freeze_bn``, upstream ``ResnetFeatureExtractor.train``).
    """

    def __init__(self, image_encoder: ImageEncoder | PrecompImageEncoder, text_encoder: TextEncoder,
                 model_config: ModelConfig, method_config: MethodConfig) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.model_config = model_config
        self.method_config = method_config
        self.tower_methods: dict[str, str | None] = {"image": None, "text": None}
        self.load_reports: list = []

    @property
    def image_source(self) -> str:
        return "precomp" if isinstance(self.image_encoder, PrecompImageEncoder) else "backbone"

    @property
    def method_name(self) -> str:
        return self.method_config.name

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------------- encoding
    def encode_images(self, batch: Mapping[str, Tensor]) -> Tensor:
        """l2-normalised image embeddings ``(B, E)`` of the batch's image part."""
        device = self._device()
        if self.image_source == "precomp":
            features = _take(batch, "features", "Float[B, K, D] precomputed region features").to(device)
            lengths = _take(batch, "feature_lengths", "Long[B] number of regions").to(device)
            return self.image_encoder(features, lengths)
        return self.image_encoder(_take(batch, "images", "Float[B, 3, H, W] normalised images").to(device))

    def encode_texts(self, batch: Mapping[str, Tensor]) -> Tensor:
        """l2-normalised caption embeddings ``(B, E)`` of the batch's text part."""
        device = self._device()
        ids = _take(batch, "input_ids", "Long[B, L] token ids").to(device)
        mask = _take(batch, "attention_mask", "Long[B, L] 1 for tokens, 0 for padding").to(device)
        return self.text_encoder(ids, mask)

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.encode_images(batch), self.encode_texts(batch)

    # ----------------------------------------------------------------------------------------- method results
    def encoders(self) -> dict[str, nn.Module]:
        return {"image": self.image_encoder, "text": self.text_encoder}

    def confidences(self) -> dict[str, Tensor]:
        """UniPT per-layer confidence weights ``alpha`` ``(B, n_targets)`` of the last forward, per tower (detached);
        empty without UniPT (image: layer1..3 of a ResNet; text: embeddings + layers 1..11 of BERT-base)."""
        out: dict[str, Tensor] = {}
        for tower, encoder in self.encoders().items():
            backbone = getattr(encoder, "backbone", None)
            if backbone is None:
                continue
            for _, _, layer in iter_layers(backbone):
                if isinstance(layer, UniPTLayer) and layer.last_confidence is not None:
                    out[tower] = layer.last_confidence
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by upstream learning-rate group: ``{text,image}_backbone`` (the backbone and the
        peft_core method on it; upstream ``bert_need_train_params`` x ``bert_lr_factor`` /
        ``resnet_need_train_params`` x ``backbone_lr_factor``) and ``{text,image}_head`` (the rest, base lr)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for tower, encoder in self.encoders().items():
            for name, p in encoder.named_parameters():
                if p.requires_grad:
                    part = "backbone" if name.startswith("backbone.") else "head"
                    groups.setdefault(f"{tower}_{part}", []).append(p)
        return groups

    def tuned_state_dict(self) -> dict[str, Tensor]:
        """Trainable parameters plus the buffers of the modules that own them (e.g. the running statistics of the
        UniPT CNN side's BatchNorms): what a tuning run changes. Full fine-tuning: the whole state dict."""
        tuned: dict[str, Tensor] = {}
        for module_name, module in self.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not any(p.requires_grad for p in own.values()):
                continue
            prefix = f"{module_name}." if module_name else ""
            tuned.update({prefix + n: p.detach() for n, p in own.items() if p.requires_grad})
            tuned.update({prefix + n: b for n, b in module.named_buffers(recurse=False) if b is not None})
        return tuned

    def load_tuned_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a :meth:`tuned_state_dict` (every key must exist in the model with the same shape)."""
        own = self.state_dict()
        unknown = sorted(k for k in state if k not in own)
        if unknown:
            raise KeyError(f"tuned state dict has {len(unknown)} keys this model lacks, e.g. {unknown[:5]}")
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
        if bad:
            raise ValueError(f"tuned state dict shape mismatch (key, file, model): {bad[:5]}")
        self.load_state_dict(dict(state), strict=False)

    # --------------------------------------------------------------------------------------- backbone warm-up
    def _cnn(self) -> ImageEncoder:
        if not isinstance(self.image_encoder, ImageEncoder):
            raise RuntimeError("freeze_backbone / unfreeze_backbone need a CNN image tower (model.image_source="
                               "'backbone')")
        if self.method_name != "full-finetune":
            raise RuntimeError(f"method {self.method_name!r} keeps the CNN frozen; freeze_backbone / "
                               "unfreeze_backbone only apply to full-finetune")
        return self.image_encoder

    def freeze_backbone(self) -> None:
        """Upstream ``freeze_backbone``: no CNN parameter trains (embedding warm-up of full fine-tuning)."""
        self._cnn().set_fixed_blocks(None)

    def unfreeze_backbone(self, fixed_blocks: int = 0) -> None:
        """Upstream ``unfreeze_backbone(fixed_blocks)``: the CNN trains except its stem and first ``fixed_blocks``
        stages."""
        self._cnn().set_fixed_blocks(fixed_blocks)
