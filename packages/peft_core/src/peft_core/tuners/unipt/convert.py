"""Load upstream UniPT side-network weights into :class:`~peft_core.tuners.unipt.layer.UniPTSide`.

The side modules keep upstream's ``nn.Sequential`` child indices, so converting is a prefix rename:

==================  ==========================================================  =====================================
layout              upstream names (prefix stripped)                             hosts
==================  ==========================================================  =====================================
``our_tuning``      ``downsample_layers.i``, ``downsample_layer`` (token anchor),  VSE-infty text/ResNeXt, CLIP4Clip
                    ``projection_layer``, ``upsample_layer``, ``gate_layer``,
                    ``identity_layers.k``
``clipvil``         ``side_first_downsample_l`` (layer 0), ``side_downsamples_l.j``  CLIP-ViL ``LXRTEncoder``
                    (layer j+1), ``side_projection_l``, ``side_final_upsample_l``,
                    ``side_gate_layer_l``
``mdetr_encoder``   ``side_downsample0_encoder``, ``side_downsamples_encoder.k``,  MDETR ``Transformer``
                    ``side_projection_encoder``, ``side_gate_layer_encoder``
``mdetr_decoder``   ``side_downsample0_decoder``, ``side_downsamples_decoder.k``,  MDETR ``Transformer``
                    ``side_projection_decoder``, ``side_gate_layer_decoder``,
                    ``side_projection_crosser.k``, ``side_final_upsample``
==================  ==========================================================  =====================================
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from peft_core.tuners.unipt.config import UniPTConfig

LAYOUTS = ("our_tuning", "clipvil", "mdetr_encoder", "mdetr_decoder")


def upstream_prefix_map(config: UniPTConfig, layout: str) -> dict[str, str]:
    """Upstream sub-module prefix -> :class:`UniPTSide` sub-module prefix, for ``config`` in ``layout``."""
    targets, last = config.targets, len(config.hidden_sizes) - 1
    if layout == "our_tuning":
        mapping = {f"downsample_layers.{i}": f"downsamples.{k}" for k, i in enumerate(targets)}
        if config.anchor == "token":
            mapping["downsample_layer"] = "anchor_downsample"
        else:
            mapping[f"downsample_layers.{last}"] = "anchor_downsample"
        mapping.update(projection_layer="projection", upsample_layer="up", gate_layer="gate")
        mapping.update({f"identity_layers.{k}": f"identity_convs.{k}" for k in range(len(targets))})
        return mapping
    if layout == "clipvil":

        def name(i: int) -> str:
            return "side_first_downsample_l" if i == 0 else f"side_downsamples_l.{i - 1}"

        mapping = {name(i): f"downsamples.{k}" for k, i in enumerate(targets)}
        mapping[name(last)] = "anchor_downsample"
        mapping.update(side_projection_l="projection", side_final_upsample_l="up", side_gate_layer_l="gate")
        return mapping
    if layout in ("mdetr_encoder", "mdetr_decoder"):
        part = layout.split("_")[1]
        mapping = {f"side_downsamples_{part}.{k}": f"downsamples.{k}" for k in range(len(targets))}
        mapping[f"side_downsample0_{part}"] = "anchor_downsample"
        mapping[f"side_projection_{part}"] = "projection"
        mapping[f"side_gate_layer_{part}"] = "gate"
        if part == "decoder":
            mapping.update({f"side_projection_crosser.{k}": f"crossers.{k}" for k in range(len(targets))})
            mapping["side_final_upsample"] = "up"
        return mapping
    raise ValueError(f"layout={layout!r} is not allowed; expected one of {list(LAYOUTS)}")


def convert_upstream_state_dict(
    state_dict: Mapping[str, Tensor], config: UniPTConfig, layout: str, *, prefix: str = ""
) -> dict[str, Tensor]:
    """Rename an upstream side-network state dict (keys under ``prefix``) to :class:`UniPTSide` keys.

    Keys outside the side network are ignored; load the result with ``side.load_state_dict(..., strict=True)`` to
    check completeness.
    """
    mapping = upstream_prefix_map(config, layout)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        for src, dst in mapping.items():
            if rest.startswith(src + "."):
                out[dst + rest[len(src) :]] = value
                break
    return out
