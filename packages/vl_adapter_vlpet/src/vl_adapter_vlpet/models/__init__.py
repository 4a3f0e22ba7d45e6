"""VL-BART / VL-T5 on stock transformers models, the VL tokenizers, and upstream checkpoint loading."""

from vl_adapter_vlpet.models.build import (
    MODEL_INPUTS,
    VLModelBundle,
    build_model,
    build_vl_seq2seq,
    check_compatible,
    model_inputs,
)
from vl_adapter_vlpet.models.checkpoint import (
    UpstreamCheckpointError,
    UpstreamLoadReport,
    load_upstream_checkpoint,
    read_upstream_state_dict,
    to_upstream_state_dict,
)
from vl_adapter_vlpet.models.config import BACKBONES, MethodConfig, ModelConfig
from vl_adapter_vlpet.models.tokenizer import build_tokenizer, vis_token_ids

__all__ = [
    "BACKBONES",
    "MODEL_INPUTS",
    "MethodConfig",
    "ModelConfig",
    "UpstreamCheckpointError",
    "UpstreamLoadReport",
    "VLModelBundle",
    "build_model",
    "build_tokenizer",
    "build_vl_seq2seq",
    "check_compatible",
    "load_upstream_checkpoint",
    "model_inputs",
    "read_upstream_state_dict",
    "to_upstream_state_dict",
    "vis_token_ids",
]
