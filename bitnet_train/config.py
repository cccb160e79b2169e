"""Typed settings for what bitnet_train itself computes: model shape, quantization, optimizer, data.

Hydra composes YAML; each section is converted here, once, into a dataclass whose
`__post_init__` checks every value. A wrong value fails before any compute with a one-line
`ConfigError` that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar


class ConfigError(ValueError):
    """A user-facing configuration or input problem; its message is one line naming the fix."""


def _choice(section: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _positive(section: str, key: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{key}={value!r} must be a number {bound}")


def _fraction(section: str, key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{section}.{key}={value!r} must be a number in [0, 1]")


@dataclass
class ModelConfig:
    """Shape of the LLaMA/BitNet decoder (names follow transformers' LlamaConfig)."""

    vocab_size: int | None = None
    """Vocabulary size; None takes the tokenizer's."""
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    """Grouped-query attention; None means as many as attention heads."""
    head_dim: int | None = None
    """None means hidden_size // num_attention_heads."""
    hidden_act: str = "silu"
    """Gated MLP activation: relu2 (BitNet b1.58) or silu (LLaMA, Qwen)."""
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    """Bias on q/k/v projections (Qwen2 style)."""
    attention_out_bias: bool = False
    """Bias on o_proj (LLaMA's attention_bias sets both)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """RMSNorm on each query and key head before RoPE (Qwen3 style)."""
    initializer_range: float = 0.02
    depth_scaled_init: bool = False
    """Start o_proj and down_proj at initializer_range / sqrt(2 * num_hidden_layers) (GPT-2 / Megatron-LM)."""

    def __post_init__(self) -> None:
        s = "model"
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "rms_norm_eps", "rope_theta", "initializer_range"):
            _positive(s, key, getattr(self, key))
        if self.vocab_size is not None:
            _positive(s, "vocab_size", self.vocab_size)
        _choice(s, "hidden_act", self.hidden_act, ("relu2", "silu"))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _positive(s, "num_key_value_heads", self.num_key_value_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"model.num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"model.hidden_size={self.hidden_size} is not divisible by model.num_attention_heads="
                    f"{self.num_attention_heads}; set model.head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")


@dataclass
class QuantConfig:
    """BitNet b1.58 quantization of linear layers (docs/METHODS.md#bitlinear-b158)."""

    enabled: bool = True
    """False trains the same model in full precision."""
    weight_scale: str = "absmean"
    """Per-matrix ternary scale: absmean (BitNet b1.58) or absmedian (b1.58 Reloaded)."""
    activation_bits: int = 8
    """Per-token absmax activation bits."""
    norm: str = "subln"
    """Extra RMSNorm placement: subln (before o_proj, down_proj), all_linear (before every quantized linear), none."""
    norm_eps: float = 1e-5
    norm_gain_init: float = 0.05
    """Initial gain of those extra norms. 0.05 (measured best for the tiny model, docs/RESULTS.md) starts the
    normed branches near the scale they have without the norms; RMSNorm's usual 1 (BitNet b1.58 2B4T,
    quant=b158_2b4t) starts them 10-45x larger (docs/METHODS.md#norm-placement)."""
    include: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch patterns of nn.Linear module names to quantize."""
    exclude: list[str] = field(default_factory=lambda: ["lm_head", "*embed_tokens*"])
    """Patterns never quantized (embeddings and lm_head stay full precision by default)."""
    weight_lambda: float = 1.0
    """Phase-in strength for weights: 0 full precision, 1 fully quantized."""
    activation_lambda: float = 1.0
    """Phase-in strength for activations."""
    activation_schemes: dict[str, str] = field(default_factory=dict)
    """Per-projection activation quantizers (BitNet a4.8 / v2, docs/METHODS.md#bitnet-a48): {pattern: scheme}, the
    first pattern (fnmatch on the module name or its leaf, e.g. o_proj) that matches wins; projections
    that match none use int8_absmax. Schemes: int8_absmax, int4_absmean, int8_absmax_topNN."""
    hadamard: list[str] = field(default_factory=list)
    """Projections that rotate their input by the Hadamard transform before quantizing (BitNet v2's
    H-BitLinear: [o_proj, down_proj])."""
    hadamard_block: int | None = None
    """None: one Hadamard over the whole input (its size must be a power of two); a power of two b:
    a block-diagonal rotation over consecutive groups of b channels."""
    activation_schemes_at: int | float = 0
    """Two-stage training (a4.8, v2): every projection uses int8_absmax before this optimizer step (an
    integer, 0 = the schemes from the start) or fraction of trainer.max_steps (in (0, 1)), and its
    activation_schemes from it on."""
    activation_schemes_optimizer: str = "retain"
    """Optimizer state at that switch: retain or reset (as schedule.optimizer)."""
    kv_bits: int | None = None
    """Quantize attention keys (after RoPE) and values per head and token to this many bits (absmax),
    in training, evaluation and the KV cache; None keeps them in full precision."""
    int_matmul: str = "auto"
    """auto (default): fully quantized int8-absmax layers multiply int8 x ternary codes with int32
    accumulation (quant/int_forward.py; equal to the fake-quant forward to 1e-5 of max|y| in fp32);
    off: always the fake-quant float matmul, bit-exact with transformers' BitNet."""
    fused_kernels: str = "auto"
    """auto (default): in an eager model the integer forward's elementwise work (activation codes, the
    subln norm, the epilogue, backward's dequantization) runs as kernels torch.compile generates from the
    same arithmetic (quant/fused_kernels.py; a few seconds to compile once per process); off: as torch ops."""

    def __post_init__(self) -> None:
        s = "quant"
        _choice(s, "int_matmul", self.int_matmul, ("auto", "off"))
        _choice(s, "fused_kernels", self.fused_kernels, ("auto", "off"))
        _choice(s, "weight_scale", self.weight_scale, ("absmean", "absmedian"))
        _choice(s, "activation_bits", self.activation_bits, (8,))
        _choice(s, "norm", self.norm, ("subln", "all_linear", "none"))
        _positive(s, "norm_eps", self.norm_eps)
        _positive(s, "norm_gain_init", self.norm_gain_init)
        _fraction(s, "weight_lambda", self.weight_lambda)
        _fraction(s, "activation_lambda", self.activation_lambda)
        for key in ("include", "exclude", "hadamard"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                raise ConfigError(f"quant.{key}={value!r} must be a list of module-name patterns")
            setattr(self, key, list(value))
        self._check_activation_schemes()

    def _check_activation_schemes(self) -> None:
        from bitnet_train.activation_schemes import KNOWN, is_known_scheme

        s = "quant"
        if not isinstance(self.activation_schemes, Mapping):
            raise ConfigError(f"quant.activation_schemes={self.activation_schemes!r} must be a mapping "
                              "{projection pattern: scheme}, e.g. {o_proj: int8_absmax_top50}")
        self.activation_schemes = {str(k): v for k, v in self.activation_schemes.items()}
        for pattern, scheme in self.activation_schemes.items():
            if not is_known_scheme(scheme):
                raise ConfigError(f"quant.activation_schemes.{pattern}={scheme!r} is not a scheme; choose one of {KNOWN}")
        block = self.hadamard_block
        if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 2
                                  or block & (block - 1)):
            raise ConfigError(f"quant.hadamard_block={block!r} must be null (the whole input) or a power of two >= 2")
        at = self.activation_schemes_at
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0 or (
                isinstance(at, float) and not (0.0 < at < 1.0 or at == 0)):
            raise ConfigError(f"quant.activation_schemes_at={at!r} must be a step (integer >= 0) or a fraction of "
                              "the run in (0, 1)")
        if isinstance(at, float) and at == 0:
            self.activation_schemes_at = 0
        _choice(s, "activation_schemes_optimizer", self.activation_schemes_optimizer, ("retain", "reset"))
        if self.activation_schemes_at != 0 and all(v == "int8_absmax" for v in self.activation_schemes.values()):
            raise ConfigError(f"quant.activation_schemes_at={at} switches to quant.activation_schemes, but those are all "
                              "int8_absmax (nothing would change); use quant=a48 or quant=v2_a4, or "
                              "quant.activation_schemes_at=0")
        kv = self.kv_bits
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or not 2 <= kv <= 8):
            raise ConfigError(f"quant.kv_bits={kv!r} must be null (full precision) or an integer from 2 to 8")

    def activation_stage_step(self, total_steps: int) -> int:
        """First optimizer step (0-based) that uses activation_schemes (two-stage training)."""
        at = self.activation_schemes_at
        return int(round(at * total_steps)) if isinstance(at, float) else int(at)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate / weight-decay schedule (the BitNet b1.58 2B4T two-phase schedule included)."""

    lr: float = 3e-3
    """Peak learning rate: 3e-3 trains the tiny ternary default best (docs/RESULTS.md, norm study);
    optim=two_phase keeps 2B4T's 1.5e-3."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 40
    schedule: str = "cosine"
    """After warmup: cosine, linear, constant, or two_phase (BitNet b1.58 2B4T: two learning-rate phases with a drop between)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine, linear, end of two_phase)."""
    phase2_start: float = 0.5
    """two_phase: fraction of the run where phase two begins (learning-rate drop, weight decay switch)."""
    phase1_end_ratio: float = 0.5333333333333333
    """two_phase: phase one decays linearly from lr to lr * this (2B4T: 1.5e-3 -> 8e-4)."""
    phase2_lr_ratio: float = 0.3333333333333333
    """two_phase: phase two restarts at lr * this and decays linearly to lr * min_lr_ratio (2B4T: 5e-4 -> 0)."""
    phase2_weight_decay: float = 0.0
    """two_phase: weight decay in phase two (2B4T: 0.1, then 0)."""

    def __post_init__(self) -> None:
        s = "optim"
        _positive(s, "lr", self.lr)
        _positive(s, "eps", self.eps)
        _positive(s, "weight_decay", self.weight_decay, allow_zero=True)
        _positive(s, "phase2_weight_decay", self.phase2_weight_decay, allow_zero=True)
        _positive(s, "warmup_steps", self.warmup_steps, allow_zero=True)
        _choice(s, "schedule", self.schedule, ("cosine", "linear", "constant", "two_phase"))
        _fraction(s, "min_lr_ratio", self.min_lr_ratio)
        _fraction(s, "phase2_start", self.phase2_start)
        _positive(s, "phase1_end_ratio", self.phase1_end_ratio)
        _positive(s, "phase2_lr_ratio", self.phase2_lr_ratio)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"optim.betas={list(self.betas)!r} must be two numbers in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))


@dataclass
class DataConfig:
    """Where text comes from, how it is tokenized and packed into blocks."""

    files: str | None = None
    """Local .txt/.jsonl/.json/.parquet (optionally .gz) path, directory or glob; None with dataset None uses the shipped corpus."""
    dataset: str | None = None
    """A datasets hub name (needs network), used when files is None."""
    dataset_config: str | None = None
    split: str = "train"
    streaming: bool = False
    """Stream documents instead of downloading and tokenizing everything first (large hub datasets)."""
    text_field: str = "text"
    """Column holding the text in .jsonl/.parquet/hub data."""
    sample_by: str = "paragraph"
    """How .txt files split into documents: line, paragraph or document (whole file)."""
    tokenizer: str | None = None
    """A sentencepiece .model file or a transformers tokenizer folder; None uses the shipped one."""
    seq_len: int = 256
    batch_size: int = 8
    """Sequences per device per micro-batch."""
    val_fraction: float = 0.02
    """Share of documents held out for validation (chosen by a hash of their text)."""
    max_val_blocks: int = 128
    """Cap on validation blocks (keeps evaluation fast)."""
    num_workers: int = 0
    cache_dir: str | None = None
    """Tokenization cache; None uses datasets' default cache."""
    seed: int = 1234
    """Shuffling seed for training blocks."""
    layout: str = "text"
    """text: documents packed into blocks; prompt_answer: one padded example per record, loss on the answer."""
    prompt_field: str = "prompt"
    """prompt_answer: the column holding the prompt."""
    answer_field: str = "answer"
    """prompt_answer: the column holding the answer."""

    def __post_init__(self) -> None:
        s = "data"
        _choice(s, "sample_by", self.sample_by, ("line", "paragraph", "document"))
        _positive(s, "seq_len", self.seq_len)
        _positive(s, "batch_size", self.batch_size)
        _positive(s, "max_val_blocks", self.max_val_blocks)
        _positive(s, "num_workers", self.num_workers, allow_zero=True)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be in (0, 1)")
        if self.files is not None and self.dataset is not None:
            raise ConfigError("data.files and data.dataset are both set; set only one (data.dataset=null to use files)")
        _choice(s, "layout", self.layout, ("text", "prompt_answer"))
        if self.layout == "prompt_answer" and self.streaming:
            raise ConfigError("data.layout=prompt_answer does not stream; set data.streaming=false")


RAMP_SHAPES = ("step", "linear", "exponential", "sigmoid", "cosine", "staircase")
LAYER_PLANS = ("all", "bottom_up", "top_down", "explicit", "by_type")


def _int_at_least(section: str, key: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{section}.{key}={value!r} must be an integer >= {low}")


@dataclass
class RampConfig:
    """How one quantizer's strength (lambda) rises from 0 to 1 once a layer's ramp starts (schedules/ramps.py)."""

    shape: str = "step"
    """step (abrupt), linear, exponential 1-(1-t)^k, sigmoid (rescaled to run 0 -> 1), cosine, staircase."""
    length: int = 0
    """Steps from the ramp's first step to lambda 1; ignored by `step`, >= 1 for every other shape."""
    k: float = 5.0
    """Steepness of exponential and sigmoid."""
    stairs: int = 4
    """staircase: lambda takes the values 1/stairs, 2/stairs, ..., 1 in equal spans of the ramp."""

    def section(self, name: str) -> "RampConfig":
        """Validate, naming errors as `name.key` (e.g. schedule.weight.length)."""
        _choice(name, "shape", self.shape, RAMP_SHAPES)
        _int_at_least(name, "length", self.length, 0)
        if self.shape != "step" and self.length < 1:
            raise ConfigError(f"{name}.length={self.length} must be >= 1 for shape {self.shape!r} "
                              f"(or use {name}.shape=step for an abrupt switch)")
        _positive(name, "k", self.k)
        _int_at_least(name, "stairs", self.stairs, 1)
        return self


@dataclass
class LayerPlanConfig:
    """Which layers start their ramps when (schedules/layerwise.py): groups in order, `offset` steps apart."""

    plan: str = "all"
    """all (every layer at once), bottom_up / top_down (by decoder layer index), explicit (groups of
    module-name patterns in `order`), by_type (groups of projection names, e.g. [[q_proj, k_proj], o_proj])."""
    order: list = field(default_factory=list)
    """explicit / by_type: the groups, first to last; each a pattern or a list of patterns (fnmatch).
    by_type with an empty order uses q/k/v, o, gate/up, down (the order of the forward pass)."""
    offset: int = 0
    """Steps between the ramp starts of consecutive groups."""

    def section(self, name: str) -> "LayerPlanConfig":
        _choice(name, "plan", self.plan, LAYER_PLANS)
        _int_at_least(name, "offset", self.offset, 0)
        if not isinstance(self.order, (list, tuple)):
            raise ConfigError(f"{name}.order={self.order!r} must be a list of groups (patterns or lists of patterns)")
        groups = []
        for group in self.order:
            patterns = [group] if isinstance(group, str) else group
            if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
                raise ConfigError(f"{name}.order entry {group!r} must be a module-name pattern or a list of them")
            groups.append(list(patterns))
        self.order = groups
        if self.plan == "explicit" and not self.order:
            raise ConfigError(f"{name}.order is empty; plan=explicit needs the groups, e.g. "
                              f"{name}.order='[model.layers.0.*,model.layers.1.*]'")
        if self.order and self.plan not in ("explicit", "by_type"):
            raise ConfigError(f"{name}.order is only used by plan=explicit or plan=by_type (plan={self.plan!r})")
        return self


@dataclass
class ScheduleConfig:
    """When quantization starts and how it phases in (docs/METHODS.md#continual-16-to-158-bit-transition); the default quantizes from step 0.

    Training is 16-bit (every lambda 0) before the transition step `at`; from it on, each layer's
    weight and activation lambdas follow their ramps, starting at `at + group * layers.offset`.
    """

    at: int | float = 0
    """Transition: an integer is an optimizer step (0 = quantized from the start); a number strictly
    between 0 and 1 is a fraction of trainer.max_steps."""
    weight: RampConfig = field(default_factory=RampConfig)
    activation: RampConfig = field(default_factory=RampConfig)
    layers: LayerPlanConfig = field(default_factory=LayerPlanConfig)
    optimizer: str = "retain"
    """Optimizer state at the transition: retain (keep Adam moments) or reset (zero moments and step counters)."""
    norms: str = "always"
    """The extra input norms of quant.norm (subln / all_linear): always (part of the architecture from
    step 0, so the 16-bit stage trains the same network) or at_transition (bypassed until the layer's
    own ramp starts, so before it the network is exactly the plain decoder, e.g. a loaded HF model)."""

    def __post_init__(self) -> None:
        s = "schedule"
        at = self.at
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0:
            raise ConfigError(f"{s}.at={at!r} must be a step (integer >= 0) or a fraction of the run in (0, 1)")
        if isinstance(at, float):
            if at.is_integer() and at == 0:
                self.at = 0
            elif not 0.0 < at < 1.0:
                raise ConfigError(f"{s}.at={at!r}: a fraction of the run must be in (0, 1); "
                                  "write an integer for a step number")
        for key, cls in (("weight", RampConfig), ("activation", RampConfig), ("layers", LayerPlanConfig)):
            value = getattr(self, key)
            if isinstance(value, Mapping):
                value = from_mapping(cls, f"{s}.{key}", value)
            if not isinstance(value, cls):
                raise ConfigError(f"{s}.{key}={value!r} must be a mapping of {cls.__name__} keys")
            setattr(self, key, value.section(f"{s}.{key}"))
        _choice(s, "optimizer", self.optimizer, ("retain", "reset"))
        _choice(s, "norms", self.norms, ("always", "at_transition"))

    @property
    def active(self) -> bool:
        """False when the schedule changes nothing: quantized from step 0, abrupt, every layer at once."""
        staggered = self.layers.plan != "all" and self.layers.offset > 0
        ramps = self.weight.shape != "step" or self.activation.shape != "step"
        return self.at != 0 or staggered or ramps

    def transition_step(self, total_steps: int) -> int:
        """The first optimizer step (0-based) that is quantized at all."""
        if isinstance(self.at, float):
            return int(round(self.at * total_steps))
        return int(self.at)


T = TypeVar("T")


def from_mapping(cls: type[T], section: str, values: Mapping[str, Any] | None) -> T:
    """Build dataclass `cls` from a (Dict)Config section, rejecting unknown keys by name."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {section}.{unknown[0]}; allowed keys are: {', '.join(sorted(names))}")
    for key, value in values.items():
        # every value: an OmegaConf ListConfig has neither .items() nor a list/tuple type
        values[key] = _plain(value)
    try:
        return cls(**values)
    except TypeError as err:  # wrong type that __post_init__ could not interpret
        raise ConfigError(f"{section}: {err}") from None


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain Python (lists and dicts)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return list(value) if isinstance(value, tuple) else value


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for hyperparameters and metadata)."""
    return dataclasses.asdict(obj)
