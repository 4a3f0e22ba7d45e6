"""What the benchmark measures: models (with their workload), shapes, and the configuration list.

A *configuration* (:class:`BenchConfig`) is ``(model, method, implementation, batch, sequence length)`` plus the
measurement settings; it is plain JSON so it can be handed to a fresh process. :func:`plan` turns the command-line
selection into configurations and :class:`Skip` rows (a preset that does not apply to a model is never dropped
silently: it becomes a table row with the reason).

Methods:

* ``full``: every parameter trainable (full fine-tuning), AdamW; the reference of the ``/ full`` ratios;
* ``frozen``: ``torch.no_grad()`` forward of the unmodified model in eval mode (the floor a side-tuning method
  can reach); the reference of the ``/ frozen`` ratios;
* a registered preset (or bare method name): ``add_adapter(model, make_config(name))`` + ``mark_trainable(model)``
  (side-tuning methods, UniPT and LST, are presets like the others: they run the backbone under ``no_grad``);
* ``peft:NAME``: Hugging Face PEFT's implementation of the same method as preset ``NAME`` (LoRA, prefix, prompt
  tuning, IA3), see :mod:`peft_core.bench.peft_ref`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REFERENCES = ("full", "frozen")
"""The two reference methods every model is measured with."""

PEFT_PREFIX = "peft:"
"""``peft:NAME`` selects Hugging Face PEFT's implementation of the method of preset ``NAME``."""

FAMILIES = ("bart", "t5", "bert", "roberta", "clip", "vit", "swin", "resnet", "resnext", "mdetr", "ofa")
"""Architecture tokens: a preset whose name carries one of them (``vlpet-large-t5``) only runs on that family."""


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: an architecture and the workload (inputs + loss) of one training step.

    Attributes:
        name: benchmark name (``--models``).
        builder: ``zoo:NAME`` (:mod:`peft_core.zoo`), ``vl:NAME`` (:mod:`peft_core.zoo_vl`, VL-BART / VL-T5 with the
            VL-Adapter visual embedding) or ``tiny:NAME`` (``toy-transformer`` or a :mod:`peft_core.testing` model).
        workload: ``seq2seq`` (text + visual tokens -> labels, LM loss), ``encoder`` (ids -> hidden states),
            ``clip`` (contrastive loss on text + image), ``image`` (pixels -> features), ``torch`` (ids -> features).
        family: architecture token (``bart``, ``t5``, ``bert``, ...), for presets named after a family.
        visual_tokens: seq2seq: number of visual tokens appended to the text embeddings (``inputs_embeds``).
        image_size: image workloads: input side in pixels.
        vl_builder: builder of the VL variant used for presets that train a ``visual_embedding``
            (:func:`peft_core.zoo_vl.needs_vl_model`); ``None`` if there is none.
        description: one line for the documentation.
        cache: real-size model: built once per run, its saved weights shared by the measuring processes.
    """

    name: str
    builder: str
    workload: str
    family: str
    description: str
    visual_tokens: int = 0
    image_size: int = 224
    vl_builder: str | None = None
    cache: bool = True


MODELS: dict[str, ModelSpec] = {}


def register_bench_model(spec: ModelSpec) -> ModelSpec:
    """Add a benchmark model (task packages add their backbones); ``--models NAME`` selects it."""
    MODELS[spec.name] = spec
    return spec


for _spec in (
    ModelSpec("bart-base-vl36", "zoo:bart-base", "seq2seq", "bart",
              "BART-base, encoder input = text embeddings + 36 visual tokens (inputs_embeds), LM loss",
              visual_tokens=36, vl_builder="vl:bart-base"),
    ModelSpec("t5-base-vl36", "zoo:t5-base", "seq2seq", "t5",
              "T5-base, encoder input = text embeddings + 36 visual tokens (inputs_embeds), LM loss",
              visual_tokens=36, vl_builder="vl:t5-base"),
    ModelSpec("bert-base", "zoo:bert-base", "encoder", "bert",
              "BERT-base (BertModel), loss = mean square of the last hidden states"),
    ModelSpec("clip-vit-b-32", "zoo:clip-vit-b-32", "clip", "clip",
              "CLIP ViT-B/32 (text + vision towers), contrastive loss, 224 px"),
    ModelSpec("vit-b-16", "zoo:vit-b-16", "image", "vit", "ViT-B/16 (transformers), 224 px"),
    ModelSpec("swin-b", "zoo:swin-b", "image", "swin", "Swin-B (timm), 224 px"),
    ModelSpec("resnext-101-32x8d", "zoo:resnext-101-32x8d", "image", "resnext",
              "ResNeXt-101 32x8d (VSE-infty image backbone, timm), 512 px", image_size=512),
    # small models: smoke runs and tests (same code paths, seconds instead of minutes)
    ModelSpec("toy-transformer", "tiny:toy-transformer", "torch", "torch",
              "nn.TransformerEncoderLayer x2, d=32 (torch only), loss = mean square of the outputs", cache=False),
    ModelSpec("tiny-bart-vl8", "tiny:bart", "seq2seq", "bart",
              "BART d=32, 2+2 layers (64 positions), 8 visual tokens", visual_tokens=8, cache=False),
    ModelSpec("tiny-bert", "tiny:bert", "encoder", "bert", "BERT d=32, 2 layers", cache=False),
):
    register_bench_model(_spec)


QUICK_METHODS = ("full", "frozen", "lora", "houlsby", "bitfit", "prefix", "prompt", "unipt-vse-text", "lst*",
                 "peft:lora", "peft:prefix", "peft:prompt", "peft:ia3*")
"""Method patterns of ``--quick`` (per model: :data:`QUICK_SELECTION`)."""

QUICK_SELECTION: dict[str, tuple[str, ...]] = {
    "bart-base-vl36": QUICK_METHODS,
    "bert-base": QUICK_METHODS,
    "t5-base-vl36": ("full", "frozen", "lora", "lst*", "peft:lora"),  # LST's home architecture
}
"""``--quick``: models and their method patterns (without ``--methods``)."""

FULL_MODELS = ("bart-base-vl36", "t5-base-vl36", "bert-base", "clip-vit-b-32")
FULL_METHODS = ("full", "frozen", "*", "prefix", "prompt", "peft:*", "peft:prefix", "peft:prompt")
"""Full mode: every registered preset (plus the plain prefix / prompt methods) and every PEFT counterpart."""


@dataclass(frozen=True)
class Shape:
    """Batch size, text length (encoder input before visual tokens), target length (seq2seq labels)."""

    batch: int
    seq_len: int
    target_len: int


QUICK_SHAPE = Shape(batch=2, seq_len=16, target_len=8)
FULL_SHAPE = Shape(batch=8, seq_len=32, target_len=16)


@dataclass
class BenchConfig:
    """One measured configuration (JSON round trip: handed to a fresh process)."""

    model: str
    method: str
    impl: str  # "reference" (full / frozen), "peft_core" or "hf_peft"
    batch: int
    seq_len: int
    target_len: int
    warmup: int = 2
    steps: int = 5
    device: str = "cpu"
    threads: int = 1
    lr: float = 1e-4
    vl: bool = False
    weights: str | None = None
    log: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, bool, int, int, int]:
        """Configurations with the same key share their ``full`` / ``frozen`` references."""
        return (self.model, self.vl, self.batch, self.seq_len, self.target_len)

    @property
    def label(self) -> str:
        impl = " [HF PEFT]" if self.impl == "hf_peft" else ""
        return f"{self.model}{' (VL)' if self.vl else ''} / {self.method}{impl}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Skip:
    """A (model, method) pair that is not measured, with the reason (it becomes a table row)."""

    model: str
    method: str
    impl: str
    reason: str
    vl: bool = False

    def to_row(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "impl": self.impl, "vl": self.vl, "status": "skipped",
                "note": self.reason}


# ---------------------------------------------------------------------------------------------------- selection
def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"--models {name!r} is not known; expected one of {sorted(MODELS)} or 'all'") from None


def select_models(names: Iterable[str] | None, quick: bool) -> list[ModelSpec]:
    """``None``: the mode's default list; ``all``: every real-size model."""
    names = list(names) if names else list(QUICK_SELECTION if quick else FULL_MODELS)
    if names == ["all"]:
        names = [n for n, s in MODELS.items() if s.cache]
    return [get_spec(n) for n in names]


def family_mismatch(preset: str, spec: ModelSpec) -> str | None:
    """The family a preset is named after when it is not ``spec``'s (``vlpet-large-t5`` on BART), else ``None``."""
    tokens = preset.lower().replace("_", "-").split("-")
    named = [t for t in tokens if t in FAMILIES]
    if named and spec.family not in named:
        return named[0]
    return None


def resolve_methods(patterns: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """Expand ``patterns`` over what is registered now: ``(methods, peft_methods, unmatched patterns)``.

    ``methods`` are ``full`` / ``frozen`` / preset names / bare method names; ``peft_methods``
    are the preset names after ``peft:``. A pattern without wildcards may name a bare method (``prefix`` without a
    ``prefix`` preset uses :class:`PrefixConfig`'s defaults). A ``peft:`` pattern with wildcards selects only presets
    of a method Hugging Face PEFT implements (``peft:*``); a name without wildcards is kept (and skipped with the
    reason if PEFT has no such method).
    """
    from peft_core.bench.peft_ref import METHODS as PEFT_METHODS
    from peft_core.registry import list_methods, list_presets

    presets = [p.name for p in list_presets()]
    methods = list_methods()
    own: list[str] = []
    peft: list[str] = []
    unmatched: list[str] = []

    def add(target: list[str], name: str) -> None:
        if name not in target:
            target.append(name)

    for pattern in patterns:
        is_peft = pattern.startswith(PEFT_PREFIX)
        pat = pattern[len(PEFT_PREFIX):] if is_peft else pattern
        wild = any(c in pat for c in "*?[")
        if not is_peft and pat in REFERENCES:
            add(own, pat)
            continue
        found = [p for p in presets if fnmatch.fnmatchcase(p, pat)]
        if not wild and not found and pat in methods:
            found = [pat]
        if is_peft and wild:
            found = [p for p in found if _method_of(p) in PEFT_METHODS]
        if not found:
            unmatched.append(pattern)
        for name in found:
            add(peft if is_peft else own, name)
    return own, peft, unmatched


def _method_of(name: str) -> str | None:
    from peft_core.registry import make_config

    try:
        return make_config(name).method
    except (ValueError, TypeError):
        return None


def default_threads() -> int:
    """Intra-op threads per configuration: the cores that are idle now (at least 1, at most 8).

    Each configuration runs alone, so on an idle machine this is every core; on a machine shared with other jobs,
    more threads than idle cores make every parallel region wait for a descheduled thread (a tiny step then takes
    seconds instead of milliseconds), so the load average is taken into account. ``--threads`` overrides it.
    """
    cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0
    return max(1, min(8, cores - busy))


def plan(specs: list[ModelSpec], patterns: Iterable[str] | Mapping[str, Iterable[str]], shape: Shape,
         **settings: Any) -> tuple[list[BenchConfig], list[Skip]]:
    """The configurations to measure and the skipped pairs, each with its reason.

    ``patterns`` applies to every model, or maps a model name to its own patterns. A pattern that matches no
    registered preset becomes a skipped row too. Applicability is checked on a ``meta``-device copy of each model
    (no memory, no weights): a preset whose targets are not found (``TargetError``) or whose config is invalid for
    the model (``ValueError``) is skipped with that message; any other error is left for the measurement to report.
    """
    from peft_core.bench import peft_ref
    from peft_core.bench.workloads import build_model

    configs: list[BenchConfig] = []
    skips: list[Skip] = []
    for spec in specs:
        selected = patterns.get(spec.name, QUICK_METHODS) if isinstance(patterns, Mapping) else patterns
        own, peft_names, unmatched = resolve_methods(selected)
        for pattern in unmatched:
            impl = "hf_peft" if pattern.startswith(PEFT_PREFIX) else "peft_core"
            skips.append(Skip(spec.name, pattern, impl, f"no preset registered at run time matches '{pattern}'"))
        metas: dict[bool, Any] = {}

        def meta(vl: bool, spec: ModelSpec = spec, metas: dict[bool, Any] = metas) -> Any:
            if vl not in metas:
                metas[vl] = build_model(spec, vl=vl, device="meta")
            return metas[vl]

        def make(method: str, impl: str, vl: bool = False, spec: ModelSpec = spec) -> BenchConfig:
            return BenchConfig(spec.name, method, impl, shape.batch, shape.seq_len, shape.target_len, vl=vl,
                               **settings)

        applied: dict[str, bool] = {}
        vl_used = False
        for method in own:
            if method in REFERENCES:
                configs.append(make(method, "reference"))
                continue
            other = family_mismatch(method, spec)
            if other is not None:
                skips.append(Skip(spec.name, method, "peft_core",
                                  f"preset is for {other}, this model is {spec.family}"))
                continue
            vl, reason = check_applies(spec, method, meta)
            if reason is not None:
                skips.append(Skip(spec.name, method, "peft_core", reason, vl=vl))
                continue
            configs.append(make(method, "peft_core", vl=vl))
            applied[method] = not vl
            vl_used = vl_used or vl
        if vl_used:  # references of the VL variant, so its rows have ratios to the same model
            configs.extend(make(m, "reference", vl=True) for m in REFERENCES if m in own)
        for name in peft_names:
            reason = peft_ref.unsupported(name, spec)
            if reason is None and not applied.get(name, False):
                reason = (f"no peft_core '{name}' row on this model to compare with" if name not in applied
                          else "the peft_core preset needs the VL model variant")
            if reason is not None:
                skips.append(Skip(spec.name, name, "hf_peft", reason))
                continue
            configs.append(make(name, "hf_peft"))
    return configs, skips


def check_applies(spec: ModelSpec, method: str, meta: Any) -> tuple[bool, str | None]:
    """``(vl, reason)``: whether the preset needs the VL variant, and why it does not apply (``None``: it does)."""
    from peft_core.model import add_adapter
    from peft_core.registry import make_config
    from peft_core.targeting import TargetError

    try:
        config = make_config(method)
    except (ValueError, TypeError) as exc:
        return False, f"config: {exc}"
    vl = _needs_vl(config)
    if vl and spec.vl_builder is None:
        return True, "trains a visual_embedding; this model has no VL variant"
    try:
        model = copy.deepcopy(meta(vl))
    except Exception as exc:  # a model that cannot be built on meta is checked by the measurement
        return vl, None if not isinstance(exc, ImportError) else f"cannot build the model: {exc}"
    try:
        add_adapter(model, config)
    except (TargetError, ValueError, TypeError, AttributeError) as exc:
        return vl, f"does not apply: {type(exc).__name__}: {_first_line(exc)}"
    except Exception:  # e.g. an op without a meta kernel: let the real measurement decide
        return vl, None
    return vl, None


def _needs_vl(config: Any) -> bool:
    try:
        from peft_core.zoo_vl import needs_vl_model
    except ImportError:  # pragma: no cover - zoo_vl ships with peft_core
        return False
    return needs_vl_model(config)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
