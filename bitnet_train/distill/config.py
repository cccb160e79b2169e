"""Typed settings of BitDistill (docs/METHODS.md#bitdistill-stage-3-logit-distillation), validated once where they enter.

`distill:` in the Hydra config becomes a `BitDistillConfig`; its `stage2` and `stage3` sections
become `ContinualStageConfig` and `DistillStageConfig`, whose `attention` and `logit_cache` parts are
dataclasses of their own. Every value is checked before the teacher is loaded: a wrong one stops
with a one-line ConfigError naming the key, the value and what is allowed (bitnet_train.config).
The defaults are the reference code's: lambda = 10, gamma = 1e5 (classification; 1 and 1e3 for
summarization), temperature 5 with the tau^2 factor, R = 32 cosine relations of Q, K and V of
one late layer without masks, lr 5e-5 with cosine decay after a 5% warmup, weight decay 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bitnet_train.config import ConfigError, _choice, _fraction, _positive, from_mapping

STATES = ("q", "k", "v")


def _int(section: str, key: str, value: Any, *, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{section}.{key}={value!r} must be an integer >= {minimum}")


def _mapping(section: str, key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{section}.{key}={value!r} must be a mapping of overrides (e.g. {{files: PATH}})")
    return dict(value)


def _layers(section: str, key: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{section}.{key}={value!r} must be a non-empty list of layer indices (negative counts "
                          "from the last layer)")
    return list(value)


@dataclass
class AttentionRelationConfig:
    """MiniLMv2 multi-head attention-relation distillation of Q, K, V states (stage 3)."""

    layers: list[int] = field(default_factory=lambda: [-6])
    """Teacher layers whose states are distilled; negative counts from the end (-6 of 28 layers is layer 22,
    the layer the reference code uses for Qwen3-0.6B)."""
    student_layers: list[int] | None = None
    """The student layer paired with each teacher layer; None pairs the same indices."""
    relation_heads: int = 32
    """R: the concatenated heads [B, S, H*D] are split into R relation heads of H*D/R features."""
    relation: str = "cosine"
    """cosine: L2-normalize each state, then softmax(A A^T / temperature) (reference code, temperature 1);
    scaled_dot: softmax(A A^T / sqrt(H*D/R)) (the paper's reported form)."""
    temperature: float = 1.0
    """Divides cosine relations before the softmax (ignored by scaled_dot)."""
    states: list[str] = field(default_factory=lambda: list(STATES))
    """Which projections' outputs are related: any of q, k, v; their KLs are summed."""
    causal_mask: bool = False
    """Mask relations to later positions (the reference code masks nothing)."""
    padding_mask: bool = False
    """Mask padding keys and drop padding queries from the average (prompt/answer batches)."""
    reduction: str = "reference"
    """reference: the summed per-state, per-layer KLs divided by (layers x relation_heads), the reference
    code's value that its gamma values are meant for; mean: divided by layers only (relation_heads times
    larger)."""
    position: str = "attention"
    """Where Q and K are taken: attention (as attention uses them: after Qwen3's q/k norms and RoPE, the
    reference code's states) or pre_rope (after the q/k norms, before RoPE). V is the v_proj output."""

    def __post_init__(self) -> None:
        s = "distill.stage3.attention"
        self.layers = _layers(s, "layers", self.layers)
        if self.student_layers is not None:
            self.student_layers = _layers(s, "student_layers", self.student_layers)
            if len(self.student_layers) != len(self.layers):
                raise ConfigError(f"{s}.student_layers has {len(self.student_layers)} entries for {len(self.layers)} "
                                  f"{s}.layers; give one student layer per teacher layer (or null)")
        _int(s, "relation_heads", self.relation_heads, minimum=1)
        _choice(s, "relation", self.relation, ("cosine", "scaled_dot"))
        _positive(s, "temperature", self.temperature)
        _choice(s, "reduction", self.reduction, ("reference", "mean"))
        _choice(s, "position", self.position, ("attention", "pre_rope"))
        states = list(self.states) if isinstance(self.states, (list, tuple)) else self.states
        if not isinstance(states, list) or not states or any(x not in STATES for x in states) \
                or len(set(states)) != len(states):
            raise ConfigError(f"{s}.states={self.states!r} must be a non-empty list of distinct q, k, v")
        self.states = states


@dataclass
class LogitCacheConfig:
    """Precomputed teacher logits for stage 3: the top-k log-probabilities at the distillation temperature,
    with the log of the remaining mass, so that repeated epochs (and resumed runs) skip the teacher's logits."""

    enabled: bool = False
    top_k: int = 64
    """Teacher tokens kept per position; the rest of the distribution is kept as one bucket."""
    dir: str | None = None
    """Where the cache lives; None: teacher_logits/ in the run folder. A subfolder per teacher, data and setting."""

    def __post_init__(self) -> None:
        _int("distill.stage3.logit_cache", "top_k", self.top_k, minimum=1)


@dataclass
class ContinualStageConfig:
    """Stage 2: next-token cross-entropy of the ternary student on a general corpus."""

    tokens: int = 0
    """Training tokens (inputs) of the stage; 0 skips it. Rounded up to whole optimizer steps."""
    data: dict = field(default_factory=dict)
    """Overrides of the `data` section for this stage's corpus (e.g. {files: corpus/*.jsonl})."""
    optim: dict = field(default_factory=dict)
    """Overrides of the `optim` section for this stage."""
    warmup_fraction: float | None = None
    """Warmup as a fraction of the stage's steps; None keeps optim.warmup_steps."""

    def __post_init__(self) -> None:
        s = "distill.stage2"
        _int(s, "tokens", self.tokens)
        self.data = _mapping(s, "data", self.data)
        self.optim = _mapping(s, "optim", self.optim)
        if self.warmup_fraction is not None:
            _fraction(s, "warmup_fraction", self.warmup_fraction)


@dataclass
class DistillStageConfig:
    """Stage 3: L = CE + logit_weight * KL(teacher || student) + attention_weight * relation KL."""

    steps: int | None = None
    """Optimizer steps; None derives them from `epochs` over the stage's training set. 0 skips the stage."""
    epochs: float = 3.0
    """Passes over the training blocks or examples when `steps` is None."""
    data: dict = field(default_factory=dict)
    """Overrides of the `data` section for the task data (e.g. {files: task.jsonl, layout: prompt_answer})."""
    optim: dict = field(default_factory=lambda: {"lr": 5e-5, "weight_decay": 0.01, "schedule": "cosine",
                                                 "min_lr_ratio": 0.0})
    """Overrides of the `optim` section for this stage (reference code: lr 5e-5, cosine, weight decay 0.01)."""
    warmup_fraction: float | None = 0.05
    """Warmup as a fraction of the stage's steps; None keeps optim.warmup_steps."""
    ce_weight: float = 1.0
    """Weight of the student's own next-token cross-entropy."""
    logit_weight: float = 10.0
    """lambda: weight of the logit KL (10 for classification, 1 for summarization)."""
    temperature: float = 5.0
    """tau: softmax temperature of teacher and student logits."""
    tau_squared: bool = True
    """Multiply the logit KL by tau^2 (the reference code does; the paper's formula does not)."""
    attention_weight: float = 1e5
    """gamma: weight of the attention-relation KL (1e5 for classification, 1e3 for summarization, the reference
    code's values for its normalization, attention.reduction=reference); 0 turns it off."""
    attention: AttentionRelationConfig = field(default_factory=AttentionRelationConfig)
    logit_cache: LogitCacheConfig = field(default_factory=LogitCacheConfig)

    def __post_init__(self) -> None:
        s = "distill.stage3"
        if self.steps is not None:
            _int(s, "steps", self.steps)
        _positive(s, "epochs", self.epochs)
        self.data = _mapping(s, "data", self.data)
        self.optim = _mapping(s, "optim", self.optim)
        if self.warmup_fraction is not None:
            _fraction(s, "warmup_fraction", self.warmup_fraction)
        for key in ("ce_weight", "logit_weight", "attention_weight"):
            _positive(s, key, getattr(self, key), allow_zero=True)
        _positive(s, "temperature", self.temperature)
        if not isinstance(self.tau_squared, bool):
            raise ConfigError(f"{s}.tau_squared={self.tau_squared!r} must be true or false")
        if not isinstance(self.attention, AttentionRelationConfig):
            self.attention = from_mapping(AttentionRelationConfig, f"{s}.attention", self.attention)
        if not isinstance(self.logit_cache, LogitCacheConfig):
            self.logit_cache = from_mapping(LogitCacheConfig, f"{s}.logit_cache", self.logit_cache)


@dataclass
class BitDistillConfig:
    """BitDistill: a full-precision teacher becomes a ternary student in three stages."""

    teacher: str | None = None
    """Folder of a transformers causal LM (Qwen2/Qwen3/Llama...), or a hub id when online. Required."""
    trust_remote_code: bool = False
    """Let transformers run the teacher folder's own modelling code (only for folders you trust)."""
    teacher_dtype: str = "auto"
    """auto: bfloat16 on a GPU, float32 on CPU; or float32, bfloat16, float16."""
    student: str = "teacher"
    """teacher: stage 1 copies the teacher's shape and weights (BitDistill); config: a fresh student shaped by
    the `model` section (its vocabulary must match the teacher's)."""
    student_init: str | None = None
    """With student=teacher: a transformers folder (or hub id) of the teacher's architecture and shape whose
    weights the student starts from instead of the teacher's. The paper's setting: the student is the
    off-the-shelf base model and the teacher is that model fine-tuned on the task (FP16-SFT)."""
    norms: str = "subln"
    """Extra RMSNorms of the student (start at 1): subln (paper: before o_proj and down_proj), all_linear (the
    reference code's "allnorm": before every quantized linear) or none. Sets quant.norm."""
    norm_init: str = "calibrated"
    """Gains of the new norms after stage 1: calibrated (each channel's gain fitted on the first
    training batches (4) so that the unquantized student is as close to the teacher as a
    norm allows; distill/student.py calibrate_new_norms) or ones (the paper's and reference code's 1)."""
    stage2: ContinualStageConfig = field(default_factory=ContinualStageConfig)
    stage3: DistillStageConfig = field(default_factory=DistillStageConfig)
    eval_teacher: bool = True
    """Also report the teacher's validation loss and perplexity on the stage-3 data (one pass, no gradient)."""
    eval_stages: bool = True
    """Report the student's validation loss after stages 1 and 2 too (one pass each); the final one always is."""

    def __post_init__(self) -> None:
        s = "distill"
        if self.teacher is None or (isinstance(self.teacher, str) and not self.teacher.strip()):
            raise ConfigError("distill.teacher is not set; give the full-precision teacher's folder, e.g. "
                              "distill.teacher=/models/Qwen3-0.6B (tools/gguf_to_hf.py turns a GGUF file into one)")
        if not isinstance(self.teacher, str):
            raise ConfigError(f"distill.teacher={self.teacher!r} must be a folder path or a hub id")
        _choice(s, "teacher_dtype", self.teacher_dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice(s, "student", self.student, ("teacher", "config"))
        if self.student_init is not None:
            if not isinstance(self.student_init, str) or not self.student_init.strip():
                raise ConfigError(f"distill.student_init={self.student_init!r} must be a model folder or a hub id "
                                  "(or null: the student starts from the teacher's weights)")
            if self.student != "teacher":
                raise ConfigError("distill.student_init gives the weights of a student shaped like the teacher; it "
                                  "needs distill.student=teacher (a student=config student starts fresh)")
        _choice(s, "norms", self.norms, ("subln", "all_linear", "none"))
        _choice(s, "norm_init", self.norm_init, ("calibrated", "ones"))
        if not isinstance(self.stage2, ContinualStageConfig):
            self.stage2 = from_mapping(ContinualStageConfig, "distill.stage2", self.stage2)
        if not isinstance(self.stage3, DistillStageConfig):
            self.stage3 = from_mapping(DistillStageConfig, "distill.stage3", self.stage3)
