"""The frozen full-precision teacher of BitDistill, and forward hooks that record Q, K, V states.

`load_teacher` loads any causal LM that transformers' AutoModelForCausalLM reads from a local folder
(or from the hub when it can be reached): Qwen2, Qwen3, Llama and their relatives. The teacher is in
eval mode with every parameter frozen and runs under `torch.no_grad()`; it is bfloat16 on a GPU and
float32 on CPU unless `distill.teacher_dtype` says otherwise. Its own modelling code runs only with
`distill.trust_remote_code=true`. Mistakes (a missing path, a folder that is not a model, remote code
not allowed, no q/k/v projections to hook) end in one-line ConfigErrors before any compute.

`StateRecorder` records the Q, K, V states of `layers[i].self_attn` of a decoder (the module path of
transformers' Llama/Qwen models and of our decoder alike), heads concatenated [B, S, heads * head_dim],
which is what MiniLMv2 relations are formed from. By default Q and K are taken as BitDistill's
reference code takes them, as attention uses them: after Qwen3's q/k norms and after RoPE (K and V
before their repetition for grouped-query attention); pre-RoPE is an option. When only the states are
needed (teacher logits cached), the teacher's forward stops after the deepest recorded layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError
from bitnet_train.distill.config import AttentionRelationConfig, BitDistillConfig

log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM: `model.model.layers` (transformers Llama/Qwen and our CausalLM)."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} has no decoder layer list (model.layers) to take attention "
                          "states from; set distill.stage3.attention_weight=0 to distill logits only")
    return layers


def resolve_layers(indices: Sequence[int], num_layers: int, key: str) -> list[int]:
    """Layer indices (negative counts from the end) as 0-based positions, or ConfigError if out of range."""
    out = []
    for index in indices:
        if not -num_layers <= index < num_layers:
            raise ConfigError(f"{key} has layer {index}, but the model has {num_layers} layers "
                              f"(use 0..{num_layers - 1} or -{num_layers}..-1)")
        out.append(index % num_layers)
    return out


def relation_pairs(teacher: nn.Module, student: nn.Module, att: AttentionRelationConfig) -> list[tuple[int, int]]:
    """(teacher layer, student layer) pairs of `att`, 0-based; ConfigError if a layer is out of range or the
    relation heads do not divide a distilled projection's width (teacher and student widths may differ)."""
    t_layers = resolve_layers(att.layers, len(decoder_layers(teacher)), "distill.stage3.attention.layers")
    s_spec = att.student_layers if att.student_layers is not None else att.layers
    s_layers = resolve_layers(s_spec, len(decoder_layers(student)), "distill.stage3.attention.student_layers")
    for who, model, layers in (("teacher", teacher, t_layers), ("student", student, s_layers)):
        blocks = decoder_layers(model)
        for layer in layers:
            for name in att.states:
                projection = getattr(getattr(blocks[layer], "self_attn", None), f"{name}_proj", None)
                width = getattr(projection, "out_features", None)
                if width is not None and width % att.relation_heads:
                    raise ConfigError(
                        f"distill.stage3.attention.relation_heads={att.relation_heads} does not divide the {who}'s "
                        f"{name}_proj width {width} (layer {layer}); choose a divisor of {width}")
    return list(zip(t_layers, s_layers))


class _StopForward(Exception):
    """Raised by a hook to end a teacher forward once the states it needs are recorded."""


def _flat(state: torch.Tensor, heads_first: bool) -> torch.Tensor:
    """[B, S, width] from [B, heads, S, head_dim] (heads_first), [B, S, heads, head_dim] or [B, S, width]."""
    if heads_first:
        state = state.transpose(1, 2)
    return state.reshape(state.shape[0], state.shape[1], -1)


def _rotary_function(attention: nn.Module):
    """transformers' apply_rotary_pos_emb of the module that defines this attention class, or None."""
    return getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)


class StateRecorder:
    """Records the Q, K, V states of chosen decoder layers on every forward, as [B, S, heads * head_dim].

    position="attention" (BitDistill's reference): Q and K as attention uses them, after the q/k norms
    (Qwen3) and RoPE, K before its repetition for grouped-query attention. In our decoder they are the
    outputs of `self_attn.q_rotated` / `k_rotated`; in a transformers model a pre-hook on `self_attn`
    recomputes them from its input with the model's own q_proj, q_norm and `apply_rotary_pos_emb` (two
    extra projections of the recorded layers; a teacher runs without gradients). position="pre_rope":
    the q_norm/k_norm outputs, or q_proj/k_proj where there are none. V is always the v_proj output.
    `states[layer][name]` holds the latest states (with their autograd graph for a student). Hooks stay
    until `remove()`; `stop_after_last` ends the forward after the deepest recorded layer's attention."""

    def __init__(self, model: nn.Module, layers: Sequence[int], states: Sequence[str],
                 position: str = "attention") -> None:
        blocks = decoder_layers(model)
        self.layers, self.names = list(layers), list(states)
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.stop = False
        self._handles = []
        for layer in self.layers:
            attention = getattr(blocks[layer], "self_attn", None)
            for name in self.names:
                projection = getattr(attention, f"{name}_proj", None)
                if not isinstance(projection, nn.Module):
                    raise ConfigError(
                        f"{type(model).__name__} layer {layer} has no self_attn.{name}_proj (fused projections?); "
                        "attention-relation distillation needs separate q/k/v projections: set "
                        "distill.stage3.attention_weight=0")
            rotated = [n for n in self.names if n in ("q", "k")]
            for name in self.names:
                if name == "v" or position == "pre_rope":
                    norm = getattr(attention, f"{name}_norm", None) if name != "v" else None
                    point = norm if isinstance(norm, nn.Module) else getattr(attention, f"{name}_proj")
                    self._handles.append(point.register_forward_hook(self._recorder(layer, name, False)))
                elif isinstance(getattr(attention, f"{name}_rotated", None), nn.Module):
                    point = getattr(attention, f"{name}_rotated")
                    self._handles.append(point.register_forward_hook(self._recorder(layer, name, True)))
            if position == "attention" and rotated and not hasattr(attention, "q_rotated"):
                if _rotary_function(attention) is None:
                    raise ConfigError(
                        f"{type(attention).__name__} (layer {layer}) has no apply_rotary_pos_emb to take Q and K "
                        "after RoPE from; set distill.stage3.attention.position=pre_rope or states=[v]")
                self._handles.append(attention.register_forward_pre_hook(self._rotated_recorder(layer, rotated),
                                                                         with_kwargs=True))
        deepest = getattr(blocks[max(self.layers)], "self_attn")
        self._handles.append(deepest.register_forward_hook(self._stopper))

    def _recorder(self, layer: int, name: str, heads_first: bool):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self.states.setdefault(layer, {})[name] = _flat(output, heads_first)
        return hook

    def _rotated_recorder(self, layer: int, names: list[str]):
        def hook(attention: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
            shape = (*hidden.shape[:-1], -1, attention.head_dim)
            qk = []
            for name in ("q", "k"):
                state = getattr(attention, f"{name}_proj")(hidden).view(shape)
                norm = getattr(attention, f"{name}_norm", None)
                qk.append((norm(state) if isinstance(norm, nn.Module) else state).transpose(1, 2))
            q, k = _rotary_function(attention)(qk[0], qk[1], cos, sin)
            for name, state in (("q", q), ("k", k)):
                if name in names:
                    self.states.setdefault(layer, {})[name] = _flat(state, True)
        return hook

    def _stopper(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stop:
            raise _StopForward

    def clear(self) -> None:
        self.states = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class TeacherOutput:
    logits: torch.Tensor | None
    """[B, S, V] in the teacher's dtype, or None when only states were asked for."""
    states: dict[int, dict[str, torch.Tensor]]


class Teacher:
    """A frozen causal LM (transformers) with optional Q/K/V recording. Not an nn.Module of the student:
    its weights never enter the student's checkpoints, optimizer or distributed wrapping."""

    def __init__(self, model: nn.Module, source: str, fingerprint: str) -> None:
        model.eval()
        model.requires_grad_(False)
        self.model, self.source, self.fingerprint = model, source, fingerprint
        self.config = model.config
        self.recorder: StateRecorder | None = None

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    def record(self, layers: Sequence[int], states: Sequence[str], position: str = "attention") -> None:
        """Record the Q/K/V states of these (0-based) layers on every forward (see StateRecorder)."""
        if self.recorder is not None:
            self.recorder.remove()
        self.recorder = StateRecorder(self.model, layers, states, position)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, logits: bool = True) -> TeacherOutput:
        """Teacher logits (when `logits`) and the recorded states for a batch of token ids [B, S].

        Right-padded batches need no attention mask: with causal attention, real tokens never see the
        padding after them, so their logits and states are those of the unpadded sequence."""
        recorder = self.recorder
        if recorder is not None:
            recorder.clear()
            recorder.stop = not logits
        if not logits and recorder is None:
            raise ValueError("a teacher forward without logits needs recorded states")
        try:
            out = self.model(input_ids=input_ids, use_cache=False).logits
        except _StopForward:
            out = None
        finally:
            if recorder is not None:
                recorder.stop = False
        return TeacherOutput(out if logits else None, dict(recorder.states) if recorder is not None else {})


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {text[:200]}"


def _fingerprint(path: Path | None, source: str, config: Any) -> str:
    """What identifies the teacher's weights: its config and its weight files' names, sizes and times."""
    identity: dict[str, Any] = {"source": source, "config": config.to_dict()}
    if path is not None:
        identity["files"] = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                   for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    else:
        identity["revision"] = getattr(config, "_commit_hash", None)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_location(cfg: BitDistillConfig, key: str = "teacher") -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, the local folder or None for a hub id), or ConfigError; `key` names
    the setting that holds it (teacher, or student_init: the student's starting weights)."""
    spec = getattr(cfg, key)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            hint = " (a GGUF file: turn it into a folder with tools/gguf_to_hf.py)" if path.suffix == ".gguf" else ""
            raise ConfigError(f"distill.{key}={spec!r} is a file, not a model folder{hint}; give the folder "
                              "holding config.json and the weights")
        if not (path / "config.json").is_file():
            raise ConfigError(f"distill.{key}={spec!r} is not a transformers model folder (no config.json); give "
                              "the folder written by save_pretrained (tools/gguf_to_hf.py converts a GGUF file)")
        if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in path.iterdir()):
            raise ConfigError(f"distill.{key}={spec!r} has a config.json but no weights (*.safetensors or *.bin)")
        return str(path), path
    if not _HUB_ID.match(spec):
        raise ConfigError(f"distill.{key}={spec!r} does not exist; give the model's folder "
                          "(or a hub id such as Qwen/Qwen3-0.6B when online)")
    from bitnet_train.data.sources import _hub_reachable, _offline_mode

    if not _offline_mode() and not _hub_reachable():
        raise ConfigError(f"distill.{key}={spec!r} is not a local folder and the Hugging Face Hub cannot be "
                          "reached; download the model to a folder and pass its path")
    return spec, None


def load_teacher(cfg: BitDistillConfig, key: str = "teacher") -> Teacher:
    """The frozen teacher that `cfg.teacher` names, on CPU (move it with `.to(device)`); key="student_init"
    loads the student's starting weights the same way."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source, folder = teacher_location(cfg, key)
    spec = getattr(cfg, key)
    local = folder is not None
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, local_files_only=local)
    except Exception as err:  # transformers raises ValueError, OSError, KeyError... for bad or remote configs
        text = str(err)
        if "trust_remote_code" in text:
            raise ConfigError(f"distill.{key}={spec!r} needs its own modelling code; set "
                              "distill.trust_remote_code=true if you trust that folder") from None
        raise ConfigError(f"distill.{key}={spec!r}: transformers cannot read its config "
                          f"({_first_line(err)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=_dtype(cfg.teacher_dtype),
                                                     trust_remote_code=cfg.trust_remote_code,
                                                     local_files_only=local)
    except Exception as err:
        raise ConfigError(f"distill.{key}={spec!r} could not be loaded as a causal LM "
                          f"({_first_line(err)})") from None
    teacher = Teacher(model, source, _fingerprint(folder, source, config))
    log.info("%s: %s (%s, %s layers, %.1fM parameters, %s)", key, source, config.model_type,
             getattr(config, "num_hidden_layers", "?"),
             sum(p.numel() for p in model.parameters()) / 1e6, next(model.parameters()).dtype)
    return teacher
