"""VL-BART / VL-T5 (VL-Adapter, VL-PET): a transformers BART or T5 with VL-Adapter's visual embedding, built from
configs with random weights (no download), for parameter counts and for running VL methods on real architectures.

    from peft_core.zoo_vl import build_vl_model
    model = build_vl_model("bart-base")          # meta device: shapes and counts only
    out = model(input_ids, vis_feats=f, vis_pos=boxes, labels=y)     # on a real device

The visual embedding reproduces ylsung/VL_adapter ``VL-T5/src/modeling_bart.py`` / ``modeling_t5.py``
``VisualEmbedding`` (``use_vis_layer_norm`` and ``individual_vis_layer_norm`` True, the defaults)::

    v = Norm(Linear(feat_dim, d)(f)) + Norm(Linear(pos_dim + 1, d)([box, area])) + E_img[img_order]
        + E_tok[vocab - 1 - obj_order]

``Norm`` is ``nn.LayerNorm`` for BART and the T5 RMS norm (weight only) for T5; ``E_tok`` is the language model's
token embedding (shared, not a parameter of the visual embedding). With feat_dim 2048 (CLIP RN101 grid features),
pos_dim 4 and 2 image orders, d = 768: 1,582,848 parameters (BART) / 1,581,312 (T5).

Encoder input (upstream ``JointEncoder``): BART ``cat[LN_emb(E_tok(ids) * scale + pos), v]`` (visual tokens get
neither positions nor the embedding LayerNorm); T5 ``cat[E_tok(ids), v]`` with the relative position bias only
between text tokens (zero for every pair involving a visual token). The attention mask is ``cat[text mask, visual
mask]``. Both are obtained from the unmodified transformers encoder with temporary hooks. The visual tokens are
always the last positions, so a method that prepends tokens to the encoder input (input prompt tuning) gets
``[prompts; text; visual]``, the prompts and the text sharing T5's relative positions as in upstream's
``JointEncoder``.

The tokenizer of VL-BART adds 200 special tokens (``<extra_id_*>``, ``<vis_extra_id_*>``) to BART's 50,265; VL-T5's
tokenizer has 32,200 tokens (T5's 32,100 + 100 ``<vis_extra_id_*>``); ``build_vl_model`` uses these vocabulary
sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

VL_BART_VOCAB = 50265 + 200
VL_T5_VOCAB = 32200


class VisualRMSNorm(nn.Module):
    """T5's norm (no mean subtraction, no bias): ``w * x / sqrt(mean(x^2) + eps)``, variance in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class VisualEmbedding(nn.Module):
    """VL-Adapter's visual embedding of region / grid features (see the module docstring for the formula).

    Args:
        d_model: output size. feat_dim: feature size. pos_dim: box size (x1, x2, y1, y2). n_images: image orders.
        norm: ``layer_norm`` (BART) or ``rms_norm`` (T5). eps: the norm's epsilon.
    """

    def __init__(self, d_model: int, feat_dim: int = 2048, pos_dim: int = 4, n_images: int = 2,
                 norm: str = "layer_norm", eps: float = 1e-5) -> None:
        super().__init__()
        if norm not in ("layer_norm", "rms_norm"):
            raise ValueError(f"norm={norm!r} is not allowed; expected one of ['layer_norm', 'rms_norm']")
        make_norm: Callable[[], nn.Module] = (
            (lambda: nn.LayerNorm(d_model, eps=eps)) if norm == "layer_norm" else (lambda: VisualRMSNorm(d_model, eps))
        )
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d_model), make_norm())
        self.absolute_vis_pos_embedding = nn.Sequential(nn.Linear(pos_dim + 1, d_model), make_norm())
        self.img_order_embedding = nn.Embedding(n_images, d_model)
        self.pos_dim = pos_dim

    def forward(self, feats: torch.Tensor, pos: torch.Tensor, img_order_ids: torch.Tensor | None = None,
                obj_order_ids: torch.Tensor | None = None,
                obj_order_embedding: nn.Embedding | None = None) -> torch.Tensor:
        """``feats`` (B, N, feat_dim), ``pos`` (B, N, 4) boxes (x1, x2, y1, y2); ``obj_order_embedding`` the token
        embedding whose last rows embed the object order (omitted from the sum when ``None``)."""
        b, n, _ = feats.shape
        if pos.shape != (b, n, self.pos_dim):
            raise ValueError(f"pos has shape {tuple(pos.shape)}; expected {(b, n, self.pos_dim)} (one box a feature)")
        area = ((pos[:, :, 3] - pos[:, :, 2]) * (pos[:, :, 1] - pos[:, :, 0])).unsqueeze(2)
        out = self.feat_embedding(feats) + self.absolute_vis_pos_embedding(torch.cat([pos, area], dim=2))
        if img_order_ids is None:
            img_order_ids = torch.zeros(1, n, dtype=torch.long, device=feats.device)
        out = out + self.img_order_embedding(img_order_ids)
        if obj_order_embedding is not None:
            if obj_order_ids is None:
                obj_order_ids = torch.arange(n, dtype=torch.long, device=feats.device).unsqueeze(0)
            table = obj_order_embedding.weight
            out = out + F.embedding(table.shape[0] - obj_order_ids - 1, table)
        return out


def vl_visual_embedding(d_model: int, feat_dim: int = 2048, pos_dim: int = 4, n_images: int = 2,
                        norm: str = "layer_norm", eps: float = 1e-5, init_std: float | None = None) -> VisualEmbedding:
    """A :class:`VisualEmbedding`; ``init_std`` initialises Linear / Embedding weights N(0, init_std) with zero biases
    (BART's ``_init_weights``), ``None`` keeps PyTorch's defaults (T5's ``_init_weights`` leaves them)."""
    module = VisualEmbedding(d_model, feat_dim, pos_dim, n_images, norm, eps)
    if init_std is not None:
        with torch.no_grad():
            for sub in module.modules():
                if isinstance(sub, nn.Linear | nn.Embedding):
                    nn.init.normal_(sub.weight, std=init_std)
                if isinstance(sub, nn.Linear) and sub.bias is not None:
                    nn.init.zeros_(sub.bias)
    return module


class VLSeq2Seq(nn.Module):
    """A transformers BART or T5 (``model``) with a VL-Adapter ``visual_embedding`` appended to the encoder input.

    ``forward`` / ``generate`` take the text ``input_ids`` and the visual ``vis_feats`` / ``vis_pos`` (and
    optional masks and order ids); other keyword arguments (``labels``, ``decoder_input_ids``, generation options) go
    to the language model. The language model's code is not modified: the visual tokens are put in place with
    temporary forward hooks during :meth:`encode`.
    """

    def __init__(self, model: nn.Module, feat_dim: int = 2048, pos_dim: int = 4, n_images: int = 2,
                 init_std: float | None = None) -> None:
        super().__init__()
        self.family = getattr(model.config, "model_type", None)
        if self.family not in ("bart", "t5"):
            raise ValueError(f"model_type={self.family!r} is not allowed; expected a 'bart' or 't5' model")
        cfg = model.config
        norm, eps = ("layer_norm", 1e-5) if self.family == "bart" else ("rms_norm", cfg.layer_norm_epsilon)
        self.model = model
        self.visual_embedding = vl_visual_embedding(cfg.d_model, feat_dim, pos_dim, n_images, norm, eps, init_std)

    @property
    def config(self) -> Any:
        return self.model.config

    def get_encoder(self) -> nn.Module:
        """The language model's encoder (methods that hook the encoder, e.g. input prompts, find it here)."""
        return self.model.get_encoder()

    def get_decoder(self) -> nn.Module:
        return self.model.get_decoder()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def encode(self, input_ids: torch.Tensor, vis_feats: torch.Tensor, vis_pos: torch.Tensor,
               attention_mask: torch.Tensor | None = None, vis_attention_mask: torch.Tensor | None = None,
               img_order_ids: torch.Tensor | None = None,
               obj_order_ids: torch.Tensor | None = None) -> tuple[Any, torch.Tensor]:
        """Run the encoder on ``[text; visual]`` tokens; returns ``(encoder output, joint attention mask)``."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.model.config.pad_token_id).long()
        token_embedding = self.model.get_input_embeddings()
        vis = self.visual_embedding(vis_feats, vis_pos, img_order_ids, obj_order_ids, token_embedding)
        b, v = vis.shape[:2]
        if vis_attention_mask is None:
            vis_attention_mask = attention_mask.new_ones(b, v)
        mask = torch.cat([attention_mask, vis_attention_mask.to(attention_mask.dtype)], dim=1)
        encoder = self.model.get_encoder()
        text = encoder.embed_tokens(input_ids)
        if self.family == "bart":
            inputs = torch.cat([text, torch.zeros_like(vis, dtype=text.dtype)], dim=1)

            def place_visual(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
                # the visual tokens are the last v positions (a method may prepend tokens, e.g. input prompts)
                return torch.cat([output[:, : output.shape[1] - v], vis.to(output.dtype)], dim=1)

            handles = [encoder.layernorm_embedding.register_forward_hook(place_visual)]
        else:
            inputs = torch.cat([text, vis.to(text.dtype)], dim=1)

            def text_only_bias(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
                # the sequence is [front; visual]: the front is the text, or the text with tokens a method prepended
                # (input prompts), which get relative positions among themselves as upstream's JointEncoder gives them
                given = [kwargs.get("position_bias"), kwargs.get("key_value_states"), *args[1:]]
                if any(a is not None for a in given):  # a bias already given, or cross-attention: leave it
                    return None
                hidden = args[0] if args else kwargs["hidden_states"]
                total = hidden.shape[1]
                front = total - v
                text_bias = module.compute_bias(front, front, device=hidden.device)
                bias = text_bias.new_zeros(1, text_bias.shape[1], total, total)
                bias[:, :, :front, :front] = text_bias
                return args, {**kwargs, "position_bias": bias}

            # every encoder self-attention that owns a relative bias: the backbone's first block and, for side
            # networks (LST), the side encoder's first block, each computing the text-only bias from its own table
            handles = [m.register_forward_pre_hook(text_only_bias, with_kwargs=True) for m in self.modules()
                       if getattr(m, "has_relative_attention_bias", False) and not getattr(m, "is_decoder", True)
                       and hasattr(m, "compute_bias")]
        try:
            out = encoder(inputs_embeds=inputs, attention_mask=mask, return_dict=True)
        finally:
            for handle in handles:
                handle.remove()
        return out, mask

    def forward(self, input_ids: torch.Tensor, vis_feats: torch.Tensor, vis_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None, vis_attention_mask: torch.Tensor | None = None,
                img_order_ids: torch.Tensor | None = None, obj_order_ids: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        encoder_outputs, mask = self.encode(input_ids, vis_feats, vis_pos, attention_mask, vis_attention_mask,
                                            img_order_ids, obj_order_ids)
        return self.model(encoder_outputs=encoder_outputs, attention_mask=mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, vis_feats: torch.Tensor, vis_pos: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, vis_attention_mask: torch.Tensor | None = None,
                 img_order_ids: torch.Tensor | None = None, obj_order_ids: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> torch.Tensor:
        encoder_outputs, mask = self.encode(input_ids, vis_feats, vis_pos, attention_mask, vis_attention_mask,
                                            img_order_ids, obj_order_ids)
        return self.model.generate(encoder_outputs=encoder_outputs, attention_mask=mask, **generate_kwargs)


def _vl_bart() -> VLSeq2Seq:
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=VL_BART_VOCAB, d_model=768, encoder_layers=6, decoder_layers=6,
                     encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                     decoder_ffn_dim=3072, max_position_embeddings=1024)
    return VLSeq2Seq(BartForConditionalGeneration(cfg), init_std=cfg.init_std)


def _vl_t5() -> VLSeq2Seq:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=VL_T5_VOCAB, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    return VLSeq2Seq(T5ForConditionalGeneration(cfg))


VL_MODELS: dict[str, tuple[Callable[[], VLSeq2Seq], str]] = {
    "bart-base": (_vl_bart, "VL-BART: BART-base (vocab 50,465) + VL-Adapter visual embedding (feat 2048)"),
    "t5-base": (_vl_t5, "VL-T5: T5-base (vocab 32,200) + VL-Adapter visual embedding (feat 2048)"),
}


def build_vl_model(name: str, device: str | torch.device = "meta") -> VLSeq2Seq:
    """Build the VL version of architecture ``name`` (``bart-base`` or ``t5-base``) with random weights on ``device``
    (``meta``: shapes only)."""
    try:
        builder, _ = VL_MODELS[name]
    except KeyError:
        raise ValueError(f"--model {name!r} has no VL version; expected one of {sorted(VL_MODELS)}") from None
    with torch.device(device):
        model = builder()
    return model.eval()


def needs_vl_model(config: Any) -> bool:
    """Whether a method config trains a ``visual_embedding`` (so it must be applied to a :class:`VLSeq2Seq`)."""
    return any(name == "visual_embedding" or name.endswith(".visual_embedding")
               for name in (getattr(config, "modules_to_save", None) or []))
