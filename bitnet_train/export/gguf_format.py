"""The GGUF export for llama.cpp, written with the `gguf` package (docs/METHODS.md#gguf-export).

Ternary projections are stored as TQ2_0 (blocks of 256 weights in 66 bytes, 2.0625 bits per
weight) or TQ1_0 (base 3, 54 bytes per 256, 1.6875 bits per weight), quantized by
`gguf.quants.quantize`, which is exact on ternary-times-scale input. A projection whose row length
(the input dimension) is not a multiple of 256, the TQ block, is written as Q8_0 when the row is a
multiple of 32 (blocks of 32 int8 codes and an fp16 block scale: the codes -1/0/1 themselves with
block scale 1 for arch bitnet, or the matrix scale rounded to fp16 for arch llama, so the dequantized
values equal the TQ ones exactly; 8.5 bits per weight), else as F16 (codes, or codes times the
fp16-rounded scale: exact too). The exporter reports what that costs in size.

- arch `bitnet` (norm placement subln): the TQ tensors hold the codes themselves (block scale 1)
  and each projection carries its scale as a float32 tensor `<name>.scale` [1], which llama.cpp
  multiplies in after the matmul; dequantized codes times that scale equal our weights exactly.
  Sub-norms are `attn_sub_norm` / `ffn_sub_norm`, RoPE is rotate-half (NEOX), the head is tied.
- arch `llama` (norm placement none): no per-tensor scales there, so the scale is folded into the
  blocks (each block's fp16 scale is the matrix scale rounded to fp16), and q/k rows are permuted to
  llama.cpp's interleaved RoPE layout, as llama.cpp's own converter does.
Embeddings and an untied head are F32, F16 or BF16; norms F32. The tokenizer is written through
gguf's vocabulary readers (sentencepiece: `llama` model with scores and piece types; a transformers
folder: Llama-style byte-fallback BPE or GPT-2 byte-level BPE with merges).

llama.cpp's FFN for these archs is SiLU-gated: a relu^2 model (BitNet b1.58's) would load and run
there with wrong logits, so its export is refused (export it to hf or native, or train with
model.hidden_act=silu).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from bitnet_train.config import ConfigError
from bitnet_train.export.source import Source
from bitnet_train.export.ternary import dense_tensors, ternary_layers
from bitnet_train.export.tokenizer_files import SP_FILE, tokenizer_kind

QK = 256
TYPES = ("tq2_0", "tq1_0")
DENSE_TYPES = ("float32", "float16", "bfloat16")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the gguf package: pip install 'bitnet_train[gguf]'") from None
    return gguf


def choose_arch(source: Source) -> str:
    """'bitnet' or 'llama', or ConfigError naming what llama.cpp cannot run."""
    m, q = source.model_cfg, source.quant_cfg
    problems = []
    if m.qk_norm:
        problems.append("q/k norms")
    if m.attention_bias or m.attention_out_bias or m.mlp_bias:
        problems.append("biases")
    if q.norm == "all_linear":
        problems.append("an RMSNorm before every linear (quant.norm=all_linear)")
    if q.norm == "subln":
        if not m.tie_word_embeddings:
            problems.append("an untied head (arch bitnet uses the embedding as head)")
        if q.norm_eps != m.rms_norm_eps:
            problems.append(f"sub-norm eps {q.norm_eps} != model.rms_norm_eps {m.rms_norm_eps}")
        if m.num_attention_heads * m.head_dim != m.hidden_size:
            problems.append("heads * head_dim != hidden_size (arch bitnet's attn_sub_norm has hidden_size weights)")
    if problems:
        raise ConfigError("GGUF export cannot represent this model for llama.cpp: " + "; ".join(problems))
    return "bitnet" if q.norm == "subln" else "llama"


Q8_BLOCK = 32
BITS = {"tq2_0": 66 * 8 / 256, "tq1_0": 54 * 8 / 256, "q8_0": 34 * 8 / 32, "f16": 16.0}


def tensor_type(in_features: int, qtype: str) -> str:
    """The GGUF type a ternary projection with rows of `in_features` weights is written in."""
    if in_features % QK == 0:
        return qtype
    return "q8_0" if in_features % Q8_BLOCK == 0 else "f16"


def _q8_0(codes: np.ndarray, block_scale: float) -> np.ndarray:
    """Q8_0 blocks (fp16 scale, 32 int8) holding `codes` with one block scale: dequantizes to
    codes * fp16(block_scale) exactly (gguf's quantizer would pick max/127 per block instead)."""
    rows, cols = codes.shape
    blocks = codes.astype(np.int8).reshape(rows, cols // Q8_BLOCK, Q8_BLOCK)
    d = np.full((rows, cols // Q8_BLOCK, 1), block_scale, dtype=np.float16).view(np.uint8)
    return np.concatenate([d, blocks.view(np.uint8)], axis=-1).reshape(rows, -1)


def size_report(layers: dict, qtype: str) -> str:
    """One line: the ternary projections' size as written against all of them in `qtype`."""
    counts: dict[str, int] = {}
    for layer in layers.values():
        kind = tensor_type(layer.in_features, qtype)
        counts[kind] = counts.get(kind, 0) + layer.codes.numel()
    written = sum(BITS[k] * n for k, n in counts.items()) / 8
    ideal = BITS[qtype] * sum(counts.values()) / 8
    parts = ", ".join(f"{n:,} weights {k.upper()}" for k, n in counts.items())
    extra = "" if written == ideal else (f"; {written / 2**20:.2f} MiB against {ideal / 2**20:.2f} MiB all "
                                         f"{qtype.upper()} (+{written / ideal - 1:.0%}: rows not multiples of {QK})")
    return f"GGUF ternary projections: {parts}{extra}"


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q/k from rotate-half to llama.cpp's interleaved RoPE order (its converter's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dense_array(t: torch.Tensor, dtype: str):
    gguf = _gguf()
    if dtype == "float32":
        return t.float().numpy(), None
    if dtype == "float16":
        return t.half().numpy(), None
    return gguf.quants.quantize(t.float().numpy(), gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def _add_tokenizer(writer, source: Source) -> None:
    gguf = _gguf()
    tok = source.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if tokenizer_kind(tok) == "sentencepiece":
            (folder / SP_FILE).write_bytes(Path(source.tokenizer_path).read_bytes())
            vocab = gguf.vocab.SentencePieceVocab(folder)
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            proto.ParseFromString((folder / SP_FILE).read_bytes())
            writer.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))
        else:
            tok._tok.save_pretrained(tmp)
            vocab = None
            for cls in (gguf.vocab.LlamaHfVocab, gguf.vocab.BpeVocab):
                try:
                    vocab = cls(folder)
                    break
                except (FileNotFoundError, TypeError, KeyError, ValueError):
                    continue
            if vocab is None:
                raise ConfigError(f"tokenizer {tok.name} is neither sentencepiece nor a BPE tokenizer that gguf reads")
            if vocab.tokenizer_model == "gpt2":
                warnings.warn("GGUF: llama.cpp identifies byte-level BPE pre-tokenizers by a hash of known tokenizers; "
                              "this one is written as 'default', which may split text differently", stacklevel=3)
                writer.add_tokenizer_pre("default")
                special = gguf.SpecialVocab(folder, load_merges=True)
                if special.merges:
                    writer.add_token_merges(special.merges)
        tokens, scores, types = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(ttype)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_eos_token_id(tok.eos_id)
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(False)  # training packs documents without BOS


def write_gguf(source: Source, out: str | Path, qtype: str = "tq2_0", dense_dtype: str = "float32",
               progress: Callable[[Iterable], Iterable] = lambda x: x,
               report: Callable[[str], None] = lambda line: None) -> Path:
    gguf = _gguf()
    if qtype not in TYPES:
        raise ConfigError(f"GGUF type {qtype!r} is not one of {', '.join(TYPES)}")
    if dense_dtype not in DENSE_TYPES:
        raise ConfigError(f"dense dtype {dense_dtype!r} is not one of {', '.join(DENSE_TYPES)}")
    arch = choose_arch(source)
    layers = ternary_layers(source.model)
    bad = [n for n, t in layers.items() if t.activation != "int8_absmax"]
    if bad:
        raise ConfigError(f"layer {bad[0]} uses activation scheme {layers[bad[0]].activation}; llama.cpp quantizes "
                          "activations to 8 bits only")
    if source.quant_cfg.kv_bits is not None:
        warnings.warn(f"quant.kv_bits={source.quant_cfg.kv_bits}: this GGUF does not choose llama.cpp's KV cache type "
                      "(its --cache-type-k / --cache-type-v options do)", stacklevel=2)
    rotated = [n for n, t in layers.items() if t.hadamard_block]
    if rotated:
        raise ConfigError(f"layer {rotated[0]} rotates its input by a Hadamard transform (BitNet v2), which llama.cpp "
                          "does not do; export to native instead")
    m = source.model_cfg
    if m.hidden_act != "silu":
        raise ConfigError(f"GGUF export refused: the model's FFN is {m.hidden_act}-gated and llama.cpp's {arch} "
                          "graph computes a SiLU-gated one (it would run with wrong logits); export --format hf or "
                          "native, or train with model.hidden_act=silu")
    out = Path(out)
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out} must end in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    gtype = {"tq2_0": gguf.GGMLQuantizationType.TQ2_0, "tq1_0": gguf.GGMLQuantizationType.TQ1_0}[qtype]
    file_type = {"tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0, "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0}[qtype]
    arch_enum = gguf.MODEL_ARCH.BITNET if arch == "bitnet" else gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch_enum, m.num_hidden_layers)

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch_enum])
    writer.add_name(source.checkpoint.stem)
    writer.add_context_length(m.max_position_embeddings)
    writer.add_embedding_length(m.hidden_size)
    writer.add_block_count(m.num_hidden_layers)
    writer.add_feed_forward_length(m.intermediate_size)
    writer.add_head_count(m.num_attention_heads)
    writer.add_head_count_kv(m.num_key_value_heads)
    writer.add_rope_dimension_count(m.head_dim)
    writer.add_key_length(m.head_dim)
    writer.add_value_length(m.head_dim)
    writer.add_rope_freq_base(m.rope_theta)
    writer.add_layer_norm_rms_eps(m.rms_norm_eps)
    writer.add_vocab_size(m.vocab_size)
    writer.add_file_type(file_type)
    _add_tokenizer(writer, source)

    def gguf_name(hf_name: str) -> str:
        base, _, suffix = hf_name.rpartition(".")
        if base.endswith(".input_norm"):  # a sub-norm: the input norm of o_proj / down_proj
            bid = int(base.split(".")[2])
            kind = gguf.MODEL_TENSOR.ATTN_SUB_NORM if ".o_proj." in base + "." else gguf.MODEL_TENSOR.FFN_SUB_NORM
            return gguf.TENSOR_NAMES[kind].format(bid=bid) + "." + suffix
        mapped = names.get_name(base)
        if mapped is None:
            raise ConfigError(f"no GGUF name for tensor {hf_name}")
        return f"{mapped}.{suffix}"

    for key, tensor in dense_tensors(source.model).items():
        if "norm" in key:
            writer.add_tensor(gguf_name(key), tensor.float().numpy())
        else:
            data, raw = _dense_array(tensor, dense_dtype)
            writer.add_tensor(gguf_name(key), data, raw_dtype=raw)
    for name in progress(list(layers)):
        layer = layers[name]
        codes = layer.codes.float()
        leaf = name.rsplit(".", 1)[-1]
        if arch == "llama" and leaf in ("q_proj", "k_proj"):
            codes = _permute(codes, m.num_attention_heads if leaf == "q_proj" else m.num_key_value_heads)
        kind = tensor_type(layer.in_features, qtype)
        if kind == "q8_0":
            block_scale = 1.0 if arch == "bitnet" else float(layer.scale)
            writer.add_tensor(gguf_name(f"{name}.weight"), _q8_0(codes.numpy(), block_scale),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif kind == "f16":
            scale16 = torch.tensor(1.0) if arch == "bitnet" else layer.scale.half().float()
            writer.add_tensor(gguf_name(f"{name}.weight"), (codes * scale16).half().numpy())
        else:
            values = codes if arch == "bitnet" else codes * layer.scale
            writer.add_tensor(gguf_name(f"{name}.weight"), gguf.quants.quantize(values.numpy(), gtype), raw_dtype=gtype)
        if arch == "bitnet":
            writer.add_tensor(gguf_name(f"{name}.scale"), layer.scale.numpy().astype(np.float32))
        if layer.norm_weight is not None:
            writer.add_tensor(gguf_name(f"{name}.input_norm.weight"), layer.norm_weight.float().numpy())
    report(size_report(layers, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
