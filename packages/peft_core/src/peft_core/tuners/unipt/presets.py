"""One UniPT configuration per upstream host (Paranioar/UniPT @ 3fa457d987), structure-exact.

Each function takes the host's size arguments plus ``**overrides`` (any :class:`UniPTConfig` field); the attachment
fields (``layer_modules``, ``anchor_module``, ``output_module``, ``mask_kwarg``) are set for the module names of the
transformers / timm models the upstream hosts use (BERT, CLIP towers, ResNet stages), so ``add_adapter`` works on them
directly. They are registered as ``unipt-vse-text`` ... ``unipt-mdetr-decoder`` in :mod:`peft_core.tuners.unipt.model`.
Side parameter counts at the defaults (upstream's ``count_params``; ``tests/test_unipt.py`` checks them):

====================  =========  =========================================================================
preset                params     upstream
====================  =========  =========================================================================
vse_text              5,921,281  ``VSE-infty/lib/adapter_for_transformer.py:Our_tuning_for_transformer``
vse_image             6,433,537  ``VSE-infty/lib/adapter_for_cnn.py:Our_tuning_for_resnet``
clip4clip_visual      5,644,289  ``CLIP4Clip/modules/module_adapter.py:Our_tuning_for_transformer``
clip4clip_text        3,940,353  ``CLIP4Clip/modules/module_adapter.py:Our_tuning_for_transformer``
clipvil               4,736,641  ``CLIP-ViL/src/lxrt/modeling.py:LXRTEncoder.construct_side_network``
mdetr_encoder           198,913  ``MDETR/models/transformer.py:Transformer`` (``side_*_encoder``)
mdetr_decoder           282,753  ``MDETR/models/transformer.py:Transformer`` (``side_*_decoder``, crossers, up)
====================  =========  =========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peft_core.tuners.unipt.config import UniPTConfig

ConfigCls = type[UniPTConfig]


def _make(config_cls: ConfigCls, base: dict[str, Any], overrides: dict[str, Any]) -> UniPTConfig:
    return config_cls(**{**base, **overrides})


def vse_text(
    *,
    hidden_size: int = 768,
    num_hidden_states: int = 13,
    embed_size: int = 1024,
    downsample_factor: int = 2,
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """VSE-infty text tower: BERT-base's 13 hidden states (embeddings + 12 layers), anchor = last, d = 512.

    Linear+LN downsample, Linear+LN projection, ReLU+Linear(d, E) up, identity, l1norm ``+1e-8``, masked means from
    caption ``lengths``. Upstream ``VSE-infty/lib/adapter_for_transformer.py:Our_tuning_for_transformer``.
    """
    base = dict(
        hidden_sizes=[hidden_size] * num_hidden_states, embed_size=embed_size, downsample_factor=downsample_factor
    )
    return _make(config_cls, base, overrides)


def vse_image(
    *,
    hidden_sizes: Sequence[int] = (256, 512, 1024, 2048),
    embed_size: int = 1024,
    downsample_factor: int = 2,
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """VSE-infty image tower: ResNeXt-101 layer1..layer4 maps, anchor = the layer4 grid, d = 512.

    Conv1x1+BN downsample and projection, ReLU+Conv1x1(d, E) up, identity convs + window pooling for the spatial
    alignment. Upstream ``VSE-infty/lib/adapter_for_cnn.py:Our_tuning_for_resnet``.
    """
    base = dict(
        hidden_sizes=list(hidden_sizes),
        embed_size=embed_size,
        downsample_factor=downsample_factor,
        input_kind="cnn_pyramid",
        downsample="conv_bn",
        projection="conv_bn",
        up="relu_conv",
    )
    return _make(config_cls, base, overrides)


def _clip4clip(
    width: int,
    num_hidden_states: int,
    embed_size: int,
    downsample_factor: int,
    config_cls: ConfigCls,
    overrides: dict[str, Any],
    tower: str,
) -> UniPTConfig:
    projection = "visual_projection" if tower == "vision" else "text_projection"
    base = dict(
        hidden_sizes=[width] * num_hidden_states,
        embed_size=embed_size,
        downsample_factor=downsample_factor,
        anchor="token",
        identity=False,
        target_token_residual=True,
        l1norm_mode="clamp",
        eps=1e-6,
        downsample="relu_linear",
        projection="none",
        up="relu_linear",
        residual="raw_anchor",
        masked_mean_clamp=True,
        # transformers CLIPModel / CLIP{Vision,Text}ModelWithProjection: hidden states = input of layer 0 + 12 layer
        # outputs; raw anchor = the projected CLS / EOT embedding, replaced by the side output
        layer_modules=rf"(.*\.)?{tower}_model\.encoder\.layers\.\d+",
        include_input=True,
        anchor_module=projection,
        output_module=projection,
        mask_kwarg=None if tower == "vision" else "attention_mask",
        residual_token="first" if tower == "vision" else "eot",
    )
    return _make(config_cls, base, overrides)


def clip4clip_visual(
    *,
    width: int = 768,
    num_hidden_states: int = 13,
    embed_size: int = 512,
    downsample_factor: int = 1,
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """CLIP4Clip visual tower (ViT-B/32): anchor = final projected CLS embedding (B, 512), targets = all 13 states.

    ReLU+Linear downsample, no projection, ``Y = raw_anchor + ReLU+Linear(M)``, no identity but ``+ T_i[:, 0]``,
    l1norm ``clamp(1e-6)``, no mask. Upstream ``CLIP4Clip/modules/module_adapter.py:Our_tuning_for_transformer``.

    ``add_adapter``: features = ``vision_model.encoder.layers.N`` (+ their input), anchor and replaced output =
    ``visual_projection`` (so CLIP's ``image_embeds`` / logits use the side output).
    """
    return _clip4clip(width, num_hidden_states, embed_size, downsample_factor, config_cls, overrides, "vision")


def clip4clip_text(
    *,
    width: int = 512,
    num_hidden_states: int = 13,
    embed_size: int = 512,
    downsample_factor: int = 1,
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """CLIP4Clip text tower: as :func:`clip4clip_visual` on the text transformer (width 512), anchor = the projected
    EOT embedding; call with ``mask=(input_ids != 0)`` and ``position=input_ids.argmax(-1)``.

    ``add_adapter``: features = ``text_model.encoder.layers.N`` (+ their input), anchor and replaced output =
    ``text_projection``, mask = the model's ``attention_mask``, position = ``input_ids.argmax(-1)``."""
    return _clip4clip(width, num_hidden_states, embed_size, downsample_factor, config_cls, overrides, "text")


def clipvil(
    *,
    hidden_size: int = 768,
    num_layers: int = 12,
    reduction_factor: int = 2,
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """CLIP-ViL (VisualBERT-style single stream): joint embeddings + 12 layer outputs, anchor = last, d = 384.

    Linear+LN downsample, MLP(d, 768, d)+LN projection, Linear(d, 768) up, identity, l1norm ``+1e-6``, BERT-normal
    init. Upstream ``CLIP-ViL/src/lxrt/modeling.py:LXRTEncoder`` (``side_*_l``).

    ``add_adapter`` (BERT-like single stream): the side output replaces the ``encoder`` output, so the frozen pooler
    runs on it, as upstream feeds the side output to ``BertPooler`` and the trainable ``logit_fc``.
    """
    base = dict(
        hidden_sizes=[hidden_size] * (num_layers + 1),
        embed_size=hidden_size,
        downsample_factor=reduction_factor,
        eps=1e-6,
        projection="mlp_ln",
        up="linear",
        init="bert_normal",
        output_module="encoder",
    )
    return _make(config_cls, base, overrides)


def _mdetr(d_model: int, num_layers: int, select_layers: Sequence[int]) -> dict[str, Any]:
    return dict(
        hidden_sizes=[d_model] * (num_layers + 1),
        embed_size=d_model,
        downsample_factor=2,
        target_layers=list(select_layers),
        eps=1e-7,
        projection="mlp_ln",
        init="xavier_uniform",
    )


def mdetr_encoder(
    *,
    d_model: int = 256,
    num_layers: int = 6,
    select_layers: Sequence[int] = (1, 3, 5),
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """MDETR encoder side: features = [input of encoder layer 0..5, last memory] (batch first), anchor = last memory.

    Output = ``side_img_memory`` = ``A + Proj(M)`` (width ``d_model // 2``, no Up); call with
    ``mask = ~key_padding_mask``. Upstream ``MDETR/models/transformer.py:Transformer.forward`` (encode path).

    ``add_adapter``: any batch-first encoder with one layer list (default layer modules, ``*padding_mask`` inverted).
    """
    return _make(config_cls, {**_mdetr(d_model, num_layers, select_layers), "up": "none"}, overrides)


def mdetr_decoder(
    *,
    d_model: int = 256,
    num_layers: int = 6,
    select_layers: Sequence[int] = (1, 3, 5),
    config_cls: ConfigCls = UniPTConfig,
    **overrides: Any,
) -> UniPTConfig:
    """MDETR decoder side: features = [tgt, hs_0..hs_5] (batch first), anchor = hs[-1], no mask; each target first
    crosses the encoder side memory (``context=side_img_memory, context_mask=~key_padding_mask``); output =
    ``ReLU+Linear+LN`` of ``stack([T_1, T_3, T_5, A + Proj(M)])``. Upstream ``MDETR/models/transformer.py`` (decode).

    Side network only: the crossers need the encoder side's memory as ``context``, which a single adapter on one
    model cannot receive, so ``add_adapter`` rejects it (use :class:`UniPTSide` directly).
    """
    base = {**_mdetr(d_model, num_layers, select_layers), "up": "relu_linear_ln"}
    return _make(config_cls, {**base, "cross_context": True, "output_levels": True}, overrides)


PRESETS = {
    "unipt_vse_text": vse_text,
    "unipt_vse_image": vse_image,
    "unipt_clip4clip_visual": clip4clip_visual,
    "unipt_clip4clip_text": clip4clip_text,
    "unipt_clipvil": clipvil,
    "unipt_mdetr_encoder": mdetr_encoder,
    "unipt_mdetr_decoder": mdetr_decoder,
}
"""Preset name -> config factory (one per upstream host)."""
