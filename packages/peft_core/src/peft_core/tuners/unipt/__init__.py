"""UniPT: universal parallel tuning, a side network on a frozen backbone's layer features.

Parallel interaction (``W_i = l1norm(relu(A T_i^T)) (+ I)``, ``M_i = W_i T_i``) and confidence aggregation
(``p = softmax_i(gate(pool(A) * pool(T_i)))``, ``M = sum_i p_i M_i``), then ``Y = Up(A + Proj(M))``.
Upstream: Paranioar/UniPT @ 3fa457d987 (VSE-infty, CLIP4Clip, CLIP-ViL, MDETR). See ``docs/methods/unipt.md``.

Importing this package registers the method ``unipt`` (:class:`UniPTTuner`) and the presets ``unipt-vse-text``,
``unipt-vse-image``, ``unipt-clip4clip-visual``, ``unipt-clip4clip-text``, ``unipt-clipvil``, ``unipt-mdetr-encoder``
and ``unipt-mdetr-decoder``: ``add_adapter(model, make_config("unipt-vse-text"))``.
"""

from peft_core.tuners.unipt.backbone import collect_hidden_states, freeze, run_frozen
from peft_core.tuners.unipt.config import UniPTConfig
from peft_core.tuners.unipt.convert import convert_upstream_state_dict, upstream_prefix_map
from peft_core.tuners.unipt.layer import FeatureSources, UniPTLayer, UniPTOutput, UniPTSide
from peft_core.tuners.unipt.model import UniPTTuner, resolve_sources
from peft_core.tuners.unipt.ops import l1norm, mask_from_lengths, masked_mean, parallel_interaction
from peft_core.tuners.unipt.presets import (
    PRESETS,
    clip4clip_text,
    clip4clip_visual,
    clipvil,
    mdetr_decoder,
    mdetr_encoder,
    vse_image,
    vse_text,
)

__all__ = [
    "PRESETS",
    "FeatureSources",
    "UniPTConfig",
    "UniPTLayer",
    "UniPTOutput",
    "UniPTSide",
    "UniPTTuner",
    "clip4clip_text",
    "clip4clip_visual",
    "clipvil",
    "collect_hidden_states",
    "convert_upstream_state_dict",
    "freeze",
    "l1norm",
    "mask_from_lengths",
    "masked_mean",
    "mdetr_decoder",
    "mdetr_encoder",
    "parallel_interaction",
    "resolve_sources",
    "run_frozen",
    "upstream_prefix_map",
    "vse_image",
    "vse_text",
]
