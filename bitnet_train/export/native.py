"""The native export: one self-contained safetensors file that `bitnet_train.infer` runs.

Tensors
  <layer>.weight_packed     uint8, ternary codes packed along K: [out, ceil(in/4)] for packing
                            "2bit" (the kernel layout) or [out, ceil(in/5)] for "base3" (1.6 bits
                            per weight; repacked to 2 bits at load); kernels/packing.py defines both
  <layer>.weight_scale      float32 [1], the weight is codes * scale (one scale per matrix)
  <layer>.bias, <layer>.input_norm.weight    where the layer has them
  everything else           embeddings, norms, an untied lm_head: full precision (`dense_dtype`)
  tokenizer/<file>          uint8 bytes of the tokenizer's files
Metadata (safetensors header): `format` = "bitnet_train.ternary", `format_version` = "1", and
`config`, a JSON object: `model` (the decoder shape, bitnet_train.config.ModelConfig: includes the
activation function `hidden_act`), `quant` (`norm` placement, `norm_eps`, `weight_scale` method,
`kv_bits`: key/value quantization, absent or null for none), `packing`, `dense_dtype`, `layers`
({name: in/out features, `activation` scheme, bias, input_norm, `hadamard`: the block size of BitNet
v2's input rotation, absent or 0 for none}) and `tokenizer` (`kind`: sentencepiece or transformers, `files`, special ids).

`read_native` checks all of it and says what is wrong in one line (ConfigError).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from bitnet_train.config import ConfigError, ModelConfig, from_mapping, to_dict
from bitnet_train.export.source import Source
from bitnet_train.export.ternary import TernaryLayer, dense_tensors, ternary_layers
from bitnet_train.export.tokenizer_files import native_tokenizer_files, tokenizer_from_files, tokenizer_kind
from bitnet_train.activation_schemes import is_known_scheme
from bitnet_train.kernels.packing import k2_invalid_codes, k3_invalid_codes, pack_k2, pack_k3, repack_k3_to_k2
from bitnet_train.quant.hadamard import is_power_of_two

FORMAT = "bitnet_train.ternary"
FORMAT_VERSION = 1
PACKINGS = {"2bit": (4, pack_k2), "base3": (5, pack_k3)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NORM_PLACEMENTS = ("subln", "all_linear", "none")
TOKENIZER_PREFIX = "tokenizer/"


@dataclass
class NativeLayer:
    in_features: int
    out_features: int
    packed: torch.Tensor
    """uint8 [out, ceil(in/4)], always the 2-bit kernel layout after loading."""
    scale: torch.Tensor
    activation: str
    bias: torch.Tensor | None = None
    norm_weight: torch.Tensor | None = None
    hadamard_block: int = 0


@dataclass
class NativeModel:
    model_cfg: ModelConfig
    quant: dict[str, Any]
    packing: str
    layers: dict[str, NativeLayer]
    dense: dict[str, torch.Tensor]
    tokenizer: Any
    metadata: dict[str, Any] = field(default_factory=dict)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def native_tensors(source: Source, packing: str = "2bit", dense_dtype: str = "float32",
                   progress: Callable[[Iterable], Iterable] = lambda x: x) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the native file for `source`."""
    if packing not in PACKINGS:
        raise ConfigError(f"packing={packing!r} is not one of {', '.join(PACKINGS)}")
    if dense_dtype not in DTYPES:
        raise ConfigError(f"dense dtype {dense_dtype!r} is not one of {', '.join(DTYPES)}")
    pack = PACKINGS[packing][1]
    layers: dict[str, TernaryLayer] = ternary_layers(source.model)
    tensors: dict[str, torch.Tensor] = {}
    layer_meta = {}
    for name in progress(list(layers)):
        layer = layers[name]
        tensors[f"{name}.weight_packed"] = pack(layer.codes).contiguous()
        tensors[f"{name}.weight_scale"] = layer.scale.contiguous()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.to(DTYPES[dense_dtype]).contiguous()
        if layer.norm_weight is not None:
            tensors[f"{name}.input_norm.weight"] = layer.norm_weight.to(DTYPES[dense_dtype]).contiguous()
        layer_meta[name] = {"in_features": layer.in_features, "out_features": layer.out_features,
                            "activation": layer.activation, "bias": layer.bias is not None,
                            "input_norm": layer.norm_weight is not None, "hadamard": layer.hadamard_block}
    for key, tensor in dense_tensors(source.model).items():
        tensors[key] = tensor.to(DTYPES[dense_dtype]).contiguous()
    files = native_tokenizer_files(source.tokenizer, source.tokenizer_path)
    for name, data in files.items():
        tensors[TOKENIZER_PREFIX + name] = _bytes_tensor(data)
    tok = source.tokenizer
    config = {
        "model": to_dict(source.model_cfg),
        "quant": {"norm": source.quant_cfg.norm, "norm_eps": source.quant_cfg.norm_eps,
                  "weight_scale": source.quant_cfg.weight_scale, "kv_bits": source.quant_cfg.kv_bits},
        "packing": packing,
        "dense_dtype": dense_dtype,
        "layers": layer_meta,
        "tokenizer": {"kind": tokenizer_kind(tok), "files": sorted(files), "name": tok.name,
                      "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "bos_id": tok.bos_id, "pad_id": tok.pad_id},
    }
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(config)}
    return tensors, metadata


def write_native(source: Source, out: str | Path, packing: str = "2bit", dense_dtype: str = "float32",
                 progress: Callable[[Iterable], Iterable] = lambda x: x) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors for the native format")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors, metadata = native_tensors(source, packing, dense_dtype, progress)
    save_file(tensors, str(out), metadata=metadata)
    return out


# ---- reading ------------------------------------------------------------------------------------

def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"native export {path}: {problem}")


def _open(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise ConfigError(f"native export {path} does not exist; create one with "
                          "`python -m bitnet_train.export CHECKPOINT --format native --out FILE.safetensors`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ConfigError(f"native export {path} is not a readable safetensors file "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    return metadata, tensors


def _check_header(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if metadata.get("format") != FORMAT:
        raise _fail(path, f"format is {metadata.get('format')!r}, not {FORMAT!r} (is this a bitnet_train export?)")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise _fail(path, f"format_version {metadata.get('format_version')!r} is not an integer") from None
    if version > FORMAT_VERSION or version < 1:
        raise _fail(path, f"format_version {version} is not supported (this bitnet_train reads 1..{FORMAT_VERSION}); "
                          "upgrade bitnet_train or re-export")
    try:
        config = json.loads(metadata.get("config", ""))
    except json.JSONDecodeError as err:
        raise _fail(path, f"metadata 'config' is not JSON ({err.msg})") from None
    for key in ("model", "quant", "packing", "dense_dtype", "layers", "tokenizer"):
        if key not in config:
            raise _fail(path, f"metadata config lacks '{key}'")
    if config["packing"] not in PACKINGS:
        raise _fail(path, f"packing {config['packing']!r} is not one of {', '.join(PACKINGS)}")
    if config["quant"].get("norm") not in NORM_PLACEMENTS:
        raise _fail(path, f"norm placement {config['quant'].get('norm')!r} is not one of {', '.join(NORM_PLACEMENTS)}")
    if config["tokenizer"].get("kind") not in ("sentencepiece", "transformers"):
        raise _fail(path, f"tokenizer kind {config['tokenizer'].get('kind')!r} is not sentencepiece or transformers")
    return config


def _take(path: Path, tensors: dict[str, torch.Tensor], key: str, dtype: torch.dtype | None,
          shape: tuple[int, ...]) -> torch.Tensor:
    if key not in tensors:
        raise _fail(path, f"tensor {key} is missing")
    t = tensors.pop(key)
    if dtype is not None and t.dtype != dtype:
        raise _fail(path, f"tensor {key} is {t.dtype}, expected {dtype}")
    if tuple(t.shape) != shape:
        raise _fail(path, f"tensor {key} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _read_layer(path: Path, tensors: dict[str, torch.Tensor], name: str, meta: dict[str, Any], packing: str) -> NativeLayer:
    try:
        k, n = int(meta["in_features"]), int(meta["out_features"])
        activation = meta["activation"]
    except (KeyError, TypeError, ValueError):
        raise _fail(path, f"layer {name} metadata needs in_features, out_features and activation") from None
    if not is_known_scheme(activation):
        raise _fail(path, f"layer {name} uses activation scheme {activation!r}, unknown to this runtime "
                          "(known: int8_absmax, int4_absmean, int8_absmax_topNN)")
    per_byte = PACKINGS[packing][0]
    packed = _take(path, tensors, f"{name}.weight_packed", torch.uint8, (n, -(-k // per_byte)))
    if (k2_invalid_codes if packing == "2bit" else k3_invalid_codes)(packed):
        raise _fail(path, f"layer {name} holds byte values that are not ternary codes ({packing}); the file is corrupt")
    if packing == "base3":
        packed = repack_k3_to_k2(packed, k)
    scale = _take(path, tensors, f"{name}.weight_scale", torch.float32, (1,))
    if not (math.isfinite(scale.item()) and scale.item() > 0):
        raise _fail(path, f"layer {name} has weight scale {scale.item()}, not a positive number")
    bias = _take(path, tensors, f"{name}.bias", None, (n,)) if meta.get("bias") else None
    norm = _take(path, tensors, f"{name}.input_norm.weight", None, (k,)) if meta.get("input_norm") else None
    block = meta.get("hadamard") or 0
    if block and not (isinstance(block, int) and block >= 2 and is_power_of_two(block) and k % block == 0):
        raise _fail(path, f"layer {name} has Hadamard block {block!r}, not a power of two dividing its input size {k}")
    return NativeLayer(k, n, packed, scale, activation, bias, norm, block)


def read_native(path: str | Path) -> NativeModel:
    """Load and check a native export (tensors on CPU), or raise ConfigError naming the problem."""
    from bitnet_train.models.decoder import CausalLM

    path = Path(path).expanduser()
    metadata, tensors = _open(path)
    config = _check_header(path, metadata)
    model_cfg = from_mapping(ModelConfig, "model", config["model"])
    if model_cfg.vocab_size is None:
        raise _fail(path, "model.vocab_size is null")
    layers = {name: _read_layer(path, tensors, name, meta, config["packing"]) for name, meta in config["layers"].items()}
    # the dense tensors are exactly the rest of the decoder's state dict
    with torch.device("meta"):
        skeleton = CausalLM(model_cfg)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()
                if not (k == "lm_head.weight" and model_cfg.tie_word_embeddings)}
    for name in layers:
        expected.pop(f"{name}.weight", None)
        expected.pop(f"{name}.bias", None)
    dense = {key: _take(path, tensors, key, None, shape) for key, shape in expected.items()}
    files = {}
    for name in config["tokenizer"].get("files", []):
        if TOKENIZER_PREFIX + name not in tensors:
            raise _fail(path, f"tokenizer file {name} is missing")
        files[name] = tensors.pop(TOKENIZER_PREFIX + name).numpy().tobytes()
    if tensors:
        raise _fail(path, f"unexpected tensors {sorted(tensors)[:3]} (layers and metadata disagree)")
    if not files:
        raise _fail(path, "carries no tokenizer files")
    try:
        tokenizer = tokenizer_from_files(config["tokenizer"]["kind"], files)
    except ConfigError as err:
        raise _fail(path, f"its tokenizer does not load ({err})") from None
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise _fail(path, f"tokenizer has {tokenizer.vocab_size} tokens, the model {model_cfg.vocab_size}")
    return NativeModel(model_cfg, config["quant"], config["packing"], layers, dense, tokenizer, config)
