"""UniPT configuration: one dataclass whose options reproduce every upstream host exactly.

UniPT (Diao et al., "UniPT: Universal Parallel Tuning for Transfer Learning with Efficient Parameter and Memory",
arXiv 2308.14316; code Paranioar/UniPT @ 3fa457d987) is a side network on the *outputs* of a frozen backbone:

    A = D_a(h_anchor)                     T_i = D_i(h_i)             (reduce to d = embed_size // downsample_factor)
    W_i = l1norm(relu(A T_i^T * mask_k))  (+ I)                      M_i = W_i T_i      (parallel interaction)
    c_i = gate(pool(A) * pool(T_i))       p = softmax_i(c)           M = sum_i p_i M_i  (confidence aggregation)
    Y = Up(A + Proj(M))                   or   Y = raw_anchor + Up(Proj(M))  (CLIP4Clip)

The presets (:meth:`UniPTConfig.vse_text` ... :meth:`UniPTConfig.mdetr_decoder`) give each upstream host's exact
structure; see ``docs/methods/unipt.md``. :class:`UniPTConfig` is a :class:`~peft_core.config.PetlConfig`
(``method = "unipt"``): ``add_adapter(model, config)`` attaches the side network to the model root
(:mod:`peft_core.tuners.unipt.model`), and the JSON round trip is the shared one (``format_version``, unknown keys
dropped with a warning).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from peft_core.config import PetlConfig, check_choice

INPUT_KINDS = ("tokens", "cnn_pyramid")
ANCHORS = ("last_sequence", "token")
L1NORM_MODES = ("add_eps", "clamp")
DOWNSAMPLES = ("linear_ln", "relu_linear", "conv_bn")
PROJECTIONS = ("linear_ln", "mlp_ln", "conv_bn", "none")
UPS = ("relu_linear", "linear", "relu_linear_ln", "relu_conv", "none")
RESIDUALS = ("anchor", "raw_anchor")
INITS = ("default", "xavier_uniform", "bert_normal")
RESIDUAL_TOKENS = ("first", "eot")
MASK_AUTO = "auto"

_TOKEN_ONLY = {"downsample": ("linear_ln", "relu_linear"), "projection": ("linear_ln", "mlp_ln", "none")}
_CNN_ONLY = {"downsample": ("conv_bn",), "projection": ("conv_bn", "none"), "up": ("relu_conv", "none")}


def _positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}={value!r} is not allowed; expected an integer > 0")


@dataclasses.dataclass
class UniPTConfig(PetlConfig):
    """Options of the UniPT side network (:class:`~peft_core.tuners.unipt.layer.UniPTSide`) and of where
    ``add_adapter`` reads its inputs (:class:`~peft_core.tuners.unipt.layer.UniPTLayer`).

    The shared targeting fields ``target_modules`` / ``target_types`` / ``exclude_modules`` must stay ``None``: the
    single host of a UniPT adapter is the model root, and the features are chosen by ``layer_modules``.
    ``modules_to_save`` (task heads) works as for every method.

    Side network (the numerics):
        hidden_sizes: channel width of each backbone feature, in layer order. With ``anchor="last_sequence"`` the
            last entry is the anchor layer (VSE-infty: 13 BERT hidden states of 768; ResNeXt stages 256..2048).
        embed_size: ``E``, width of the output; with ``anchor="token"`` also the width of the raw anchor token.
        input_kind: ``"tokens"`` (features ``(B, L, C_i)``) or ``"cnn_pyramid"`` (features ``(B, C_i, H_i, W_i)``,
            spatially aligned to the last map by window-weighted sum pooling, VSE-infty ResNeXt).
        downsample_factor: ``d = embed_size // downsample_factor`` unless ``side_dim`` is given.
        side_dim: explicit side width ``d`` (overrides ``downsample_factor``).
        anchor: ``"last_sequence"`` (anchor = reduced last feature sequence) or ``"token"`` (anchor = one projected
            token passed to ``forward(anchor=...)``, CLIP4Clip's final CLS/EOT embedding).
        target_layers: indices into ``hidden_sizes`` of the target layers. ``None``: all but the last for
            ``"last_sequence"``, all for ``"token"``.
        identity: add ``I`` to the normalised interaction weights (residual of ``T_i`` at the same position).
        target_token_residual: add ``T_i``'s CLS token (or the token at ``forward(position=...)``) to ``M_i``
            (CLIP4Clip; its stand-in for the identity when the anchor is one token).
        l1norm_mode: ``"add_eps"``: ``X / (sum|X| + eps)``; ``"clamp"``: ``X / clamp(sum|X|, min=eps)``.
        eps: the l1norm epsilon (VSE 1e-8, CLIP-ViL 1e-6, MDETR 1e-7, CLIP4Clip clamp 1e-6).
        downsample: per-layer reduction ``D_i``: ``"linear_ln"`` Linear+LayerNorm, ``"relu_linear"`` ReLU then
            Linear, ``"conv_bn"`` Conv1x1+BatchNorm2d (the anchor uses the same kind).
        projection: ``Proj``: ``"linear_ln"`` Linear(d,d)+LN, ``"mlp_ln"`` Linear(d,E) ReLU Linear(E,d) LN,
            ``"conv_bn"`` Conv1x1(d,d)+BN, ``"none"``.
        up: ``Up``: ``"relu_linear"`` ReLU Linear(d,E), ``"linear"`` Linear(d,E), ``"relu_linear_ln"`` ReLU
            Linear(d,E) LN(E), ``"relu_conv"`` ReLU Conv1x1(d,E), ``"none"`` (output stays ``d`` wide).
        residual: ``"anchor"``: ``Y = Up(A + Proj(M))``; ``"raw_anchor"``: ``Y = raw_anchor + Up(Proj(M))``.
        masked_mean_clamp: divide masked means by ``clamp(sum(mask), min=1)`` (CLIP4Clip) instead of ``sum(mask)``.
        cross_context: before the interaction, ``T_i += Crosser_i(l1norm(relu(T_i C^T * mask_C)) C)`` with a
            context ``C`` of width ``d`` (MDETR decoder: the encoder side memory); ``Crosser_i`` = Linear(d,d)+LN.
        output_levels: return ``Up(stack([T_1..T_k, A + Proj(M)]))`` of shape ``(k+1, B, L, E)`` instead of
            ``Up(A + Proj(M))`` (MDETR decoder: auxiliary decoding levels).
        init: ``"default"`` (PyTorch's), ``"xavier_uniform"`` (every side parameter with ``dim > 1``, MDETR),
            ``"bert_normal"`` (Linear weights N(0, init_std), biases 0, LayerNorm 1/0, CLIP-ViL).
        init_std: standard deviation of ``"bert_normal"``.
        layer_norm_eps: epsilon of every side LayerNorm (upstream: PyTorch's default 1e-5 everywhere).

    Attachment (used by ``add_adapter`` only; ``None`` = the default for the detected architecture):
        layer_modules: regular expression (full match on the dotted name) or list of name suffixes selecting the
            modules whose *outputs* are the features, in call order. Default: transformers / timm / torch encoders
            = the blocks of the one ``encoder.layer(s)`` / ``layers`` / ``blocks`` list in the model (BERT:
            ``encoder.layer.N``); CNNs (``input_kind="cnn_pyramid"``) = the ResNet stages ``layer1`` .. ``layer4``
            (timm ResNet / ResNeXt, also ``features_only``).
        include_input: prepend the input of the first layer module as feature 0 (BERT / CLIP / ViT: the embedding
            output, giving the 13 hidden states of a 12-layer encoder). Default: ``True`` for tokens, ``False`` for
            a CNN pyramid.
        anchor_module: (``anchor="token"``) module whose output is the raw anchor token ``(B, E)`` (CLIP:
            ``visual_projection`` / ``text_projection``: the projected CLS / EOT embedding).
        output_module: module whose output is replaced by the side output (its main tensor: ``last_hidden_state``
            of a transformers output, the tensor itself, element 0 of a tuple; a list of feature maps is replaced
            as a whole). ``None``: the model root. The backbone runs without autograd until that module returns.
        mask_kwarg: forward keyword of the model holding the ``(B, L)`` validity mask of token features.
            ``"auto"``: ``attention_mask`` (1 = token), else ``src_key_padding_mask`` / ``key_padding_mask``;
            a name ending in ``padding_mask`` is inverted (PyTorch convention, True = padding). ``None``: no mask.
        residual_token: (``target_token_residual``) which token of ``T_i`` is added to ``M_i``: ``"first"`` (CLS)
            or ``"eot"`` (``input_ids.argmax(-1)`` of the model's ``input_ids``, CLIP4Clip text).
    """

    method: ClassVar[str] = "unipt"

    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [768] * 13)
    embed_size: int = 1024
    input_kind: str = "tokens"
    downsample_factor: int = 2
    side_dim: int | None = None
    anchor: str = "last_sequence"
    target_layers: list[int] | None = None
    identity: bool = True
    target_token_residual: bool = False
    l1norm_mode: str = "add_eps"
    eps: float = 1e-8
    downsample: str = "linear_ln"
    projection: str = "linear_ln"
    up: str = "relu_linear"
    residual: str = "anchor"
    masked_mean_clamp: bool = False
    cross_context: bool = False
    output_levels: bool = False
    init: str = "default"
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5
    layer_modules: str | list[str] | None = None
    include_input: bool | None = None
    anchor_module: str | None = None
    output_module: str | None = None
    mask_kwarg: str | None = MASK_AUTO
    residual_token: str = "first"

    def __post_init__(self) -> None:
        if isinstance(self.hidden_sizes, tuple | list):
            self.hidden_sizes = list(self.hidden_sizes)
        if isinstance(self.target_layers, tuple):
            self.target_layers = list(self.target_layers)
        if isinstance(self.layer_modules, tuple):
            self.layer_modules = list(self.layer_modules)
        super().__post_init__()

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def d(self) -> int:
        """Side width ``d``."""
        return self.side_dim if self.side_dim is not None else self.embed_size // self.downsample_factor

    @property
    def targets(self) -> list[int]:
        """Resolved target layer indices."""
        if self.target_layers is not None:
            return list(self.target_layers)
        n = len(self.hidden_sizes)
        return list(range(n - 1)) if self.anchor == "last_sequence" else list(range(n))

    @property
    def out_dim(self) -> int:
        """Width of the output features."""
        return self.d if self.up == "none" else self.embed_size

    # ---------------------------------------------------------------------------------------------- validate
    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and the allowed values."""
        super().validate()
        for name in ("target_modules", "target_types", "exclude_modules"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed for UniPT; expected None (the host is the model "
                    "root; choose the feature layers with layer_modules)"
                )
        check_choice("input_kind", self.input_kind, INPUT_KINDS)
        check_choice("anchor", self.anchor, ANCHORS)
        check_choice("l1norm_mode", self.l1norm_mode, L1NORM_MODES)
        check_choice("downsample", self.downsample, DOWNSAMPLES)
        check_choice("projection", self.projection, PROJECTIONS)
        check_choice("up", self.up, UPS)
        check_choice("residual", self.residual, RESIDUALS)
        check_choice("init", self.init, INITS)
        if not isinstance(self.hidden_sizes, list) or not self.hidden_sizes:
            raise ValueError(f"hidden_sizes={self.hidden_sizes!r} is not allowed; expected a non-empty list of ints")
        for i, size in enumerate(self.hidden_sizes):
            _positive_int(f"hidden_sizes[{i}]", size)
        _positive_int("embed_size", self.embed_size)
        _positive_int("downsample_factor", self.downsample_factor)
        if self.side_dim is not None:
            _positive_int("side_dim", self.side_dim)
        elif self.embed_size // self.downsample_factor == 0:
            raise ValueError(
                f"downsample_factor={self.downsample_factor!r} is not allowed; expected a factor <= embed_size "
                f"({self.embed_size}) so that d = embed_size // downsample_factor > 0"
            )
        for name in ("eps", "init_std", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name}={value!r} is not allowed; expected a number > 0")
        for name in ("identity", "target_token_residual", "masked_mean_clamp", "cross_context", "output_levels"):
            check_choice(name, getattr(self, name), (True, False))
        self._validate_targets()
        self._validate_combinations()
        self._validate_attachment()

    def _validate_targets(self) -> None:
        n = len(self.hidden_sizes)
        if self.target_layers is not None:
            bad = [t for t in self.target_layers if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n]
            if bad or not self.target_layers or len(set(self.target_layers)) != len(self.target_layers):
                raise ValueError(
                    f"target_layers={self.target_layers!r} is not allowed; expected a non-empty list of distinct "
                    f"layer indices in [0, {n})"
                )
        elif not self.targets:
            raise ValueError(
                f"hidden_sizes={self.hidden_sizes!r} is not allowed with anchor='last_sequence' and "
                "target_layers=None; expected at least 2 layers (the anchor is the last one)"
            )

    def _validate_combinations(self) -> None:
        kind_rules = _CNN_ONLY if self.input_kind == "cnn_pyramid" else _TOKEN_ONLY
        for name, allowed in kind_rules.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed with input_kind={self.input_kind!r}; "
                    f"expected one of {list(allowed)}"
                )
        if self.input_kind == "tokens" and self.up == "relu_conv":
            raise ValueError(
                "up='relu_conv' is not allowed with input_kind='tokens'; "
                f"expected one of {[u for u in UPS if u != 'relu_conv']}"
            )
        if self.input_kind == "cnn_pyramid":
            for name in ("target_token_residual", "cross_context", "output_levels"):
                if getattr(self, name):
                    raise ValueError(f"{name}=True is not allowed with input_kind='cnn_pyramid'; expected False")
            if self.anchor != "last_sequence":
                raise ValueError(
                    "anchor='token' is not allowed with input_kind='cnn_pyramid'; expected 'last_sequence'"
                )
        if self.anchor == "token":
            if self.identity:
                raise ValueError(
                    "identity=True is not allowed with anchor='token' (one query row against L keys has no "
                    "identity); expected False (use target_token_residual=True, as CLIP4Clip does)"
                )
            if self.output_levels:
                raise ValueError("output_levels=True is not allowed with anchor='token'; expected False")
        if self.residual == "raw_anchor":
            if self.anchor != "token":
                raise ValueError("residual='raw_anchor' is not allowed with anchor='last_sequence'; expected 'anchor'")
            if self.out_dim != self.embed_size:
                raise ValueError("residual='raw_anchor' is not allowed with up='none'; expected an up kind to width E")

    def _validate_attachment(self) -> None:
        value = self.layer_modules
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"layer_modules={value!r} is not allowed; expected a valid regular expression ({exc})"
                ) from None
        elif value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError(
                f"layer_modules={value!r} is not allowed; expected a regex string, a non-empty list of name suffixes "
                "or None"
            )
        if self.include_input is not None and not isinstance(self.include_input, bool):
            raise ValueError(
                f"include_input={self.include_input!r} is not allowed; expected one of [None, True, False]"
            )
        for name in ("anchor_module", "output_module", "mask_kwarg"):
            item = getattr(self, name)
            if item is not None and (not isinstance(item, str) or not item):
                raise ValueError(f"{name}={item!r} is not allowed; expected a non-empty string or None")
        check_choice("residual_token", self.residual_token, RESIDUAL_TOKENS)
        if self.anchor_module is not None and self.anchor != "token":
            raise ValueError(
                f"anchor_module={self.anchor_module!r} is not allowed with anchor='last_sequence'; expected None "
                "(the anchor is the last feature)"
            )

    # ------------------------------------------------------------------------------------------ serialisation
    # ``to_dict`` / ``from_dict`` / ``replace`` / ``save`` are :class:`PetlConfig`'s: ``{"method": "unipt",
    # "format_version": 1, ...fields}``, unknown keys dropped with a warning.

    # ------------------------------------------------------------------------------------------------ presets
    # One per upstream host; the structure lives in :mod:`peft_core.tuners.unipt.presets`.
    @classmethod
    def vse_text(cls, **kwargs: Any) -> UniPTConfig:
        """VSE-infty BERT text tower (:func:`peft_core.tuners.unipt.presets.vse_text`)."""
        return _preset("vse_text", cls, kwargs)

    @classmethod
    def vse_image(cls, **kwargs: Any) -> UniPTConfig:
        """VSE-infty ResNeXt image tower (:func:`peft_core.tuners.unipt.presets.vse_image`)."""
        return _preset("vse_image", cls, kwargs)

    @classmethod
    def clip4clip_visual(cls, **kwargs: Any) -> UniPTConfig:
        """CLIP4Clip visual tower (:func:`peft_core.tuners.unipt.presets.clip4clip_visual`)."""
        return _preset("clip4clip_visual", cls, kwargs)

    @classmethod
    def clip4clip_text(cls, **kwargs: Any) -> UniPTConfig:
        """CLIP4Clip text tower (:func:`peft_core.tuners.unipt.presets.clip4clip_text`)."""
        return _preset("clip4clip_text", cls, kwargs)

    @classmethod
    def clipvil(cls, **kwargs: Any) -> UniPTConfig:
        """CLIP-ViL single-stream encoder (:func:`peft_core.tuners.unipt.presets.clipvil`)."""
        return _preset("clipvil", cls, kwargs)

    @classmethod
    def mdetr_encoder(cls, **kwargs: Any) -> UniPTConfig:
        """MDETR encoder side (:func:`peft_core.tuners.unipt.presets.mdetr_encoder`)."""
        return _preset("mdetr_encoder", cls, kwargs)

    @classmethod
    def mdetr_decoder(cls, **kwargs: Any) -> UniPTConfig:
        """MDETR decoder side (:func:`peft_core.tuners.unipt.presets.mdetr_decoder`)."""
        return _preset("mdetr_decoder", cls, kwargs)


def _preset(name: str, cls: type[UniPTConfig], kwargs: dict[str, Any]) -> UniPTConfig:
    from peft_core.tuners.unipt import presets

    return getattr(presets, name)(config_cls=cls, **kwargs)
