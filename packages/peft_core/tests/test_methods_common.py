"""The shared property suite over (model, method) for the classic methods."""

from common import Case, PetlCommonTests

TRANSFORMERS = ["bert", "roberta", "bart", "t5", "clip", "vit"]
TIMM_ATTN = ["timm_vit", "timm_swin"]

CASES = [
    *[Case(m, "houlsby", (("init", "zero_up"),)) for m in [*TRANSFORMERS, *TIMM_ATTN]],
    *[Case(m, "pfeiffer", (("init", "zero_up"),)) for m in ["bert", "bart", "t5"]],
    Case("bert", "houlsby", (("init", "bert"),), identity=False),
    Case("bart", "vl-adapter", (("init", "zero_up"),)),
    *[Case(m, "adaptformer-64") for m in ["timm_vit", "timm_swin", "clip", "t5"]],
    Case("timm_vit", "adaptformer-64", (("learnable_scale", True), ("layer_norm", "in"))),
    *[Case(m, "lora") for m in TRANSFORMERS],
    Case("bart", "lora", (("target_modules", ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
                          ("dropout", 0.1))),
    Case("timm_vit", "lora", (("fused_slices", "qv"),)),
    Case("timm_swin", "lora", (("fused_slices", "qkv"),)),
    Case("torch_transformer", "lora"),
    Case("torch_transformer", "lora", (("fused_slices", "v"),)),
    Case("toy_conv", "lora", (("target_modules", ["conv0", "conv1"]),)),
    Case("timm_resnet", "lora", (("target_modules", r"conv1|layer1\.0\.conv1"),)),
    Case("toy_mlp", "lora", (("target_modules", ["lin0", "lin1"]), ("init", "random")), identity=False),
    *[Case(m, "bitfit") for m in ["bert", "bart", "clip", "toy_mlp", "toy_conv", "torch_transformer"]],
    Case("t5", "bitfit", (("add_missing", True),)),
    Case("bart", "bitfit-ofa"),
    *[Case(m, "layernorm") for m in ["bert", "bart", "t5", "clip", "timm_vit", "toy_mlp"]],
]


class TestClassicMethods(PetlCommonTests):
    CASES = CASES
