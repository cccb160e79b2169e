"""One decoder for LLaMA-shaped and BitNet b1.58 language models.

Pre-norm transformer: x += attn(norm(x)); x += mlp(norm(x)), a final norm and an (optionally tied)
lm_head. Attention is grouped-query with rotary embeddings (rotate-half / NEOX layout, as
transformers' Llama), optional q/k/v and o biases (Qwen2, Llama) and optional per-head q/k
RMSNorms before RoPE (Qwen3). The MLP is gated: down(act(gate(x)) * up(x)) with act = silu
(LLaMA, Qwen) or relu^2 (BitNet b1.58).

Module names follow transformers' LlamaForCausalLM (model.layers.N.self_attn.q_proj, ...), so
checkpoints map by name (models/hf.py). The model holds plain nn.Linear layers; quantization is
a later module swap (quant/convert.py), and BitNet's sub-layer norms (attn_sub_norm before
o_proj, ffn_sub_norm before down_proj) are the input norms of those BitLinear layers.

Generation passes a KVCache: the new tokens take positions after the cached ones, each attention
layer appends its keys and values to the cache and attends over all of them. Without a cache
(training, evaluation) the computation is exactly the cache-free one.

Low-bit keys and values (BitNet a4.8's 4-bit / 3-bit KV cache): `set_kv_bits(b)` quantizes every
key (after RoPE) and value per head and token, symmetric absmax over the head dimension
(quant/functional.py's per-token quantizer at b bits: codes in [-2^(b-1), 2^(b-1) - 1], scale
(2^(b-1) - 1) / max|x|). Without a cache it is applied inside attention (with a straight-through
gradient when training), so validation perplexity measures its cost; a KV cache stores the integer
codes (one int8 each) and one fp32 scale per head and token, and returns them dequantized, which is
the same computation, so cached decoding equals the cache-free forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_train.config import ModelConfig
from bitnet_train.quant.functional import activation_codes, quantize_activation
from bitnet_train.quant.norm import RMSNorm


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE, computed in fp32 like transformers' default rope."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [..., S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, D]; cos/sin: [B or 1, S, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class LayerKVCache:
    """Keys and values of one attention layer, [B, H_kv, max_length, D] buffers filled from the left.

    `update` stores the new positions and returns every position seen so far. With `bits` it keeps
    integer codes (int8) and per-head, per-token scales instead, and returns them dequantized."""

    def __init__(self, max_length: int, bits: int | None = None) -> None:
        self.max_length = max_length
        self.bits = bits
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.key_scales: torch.Tensor | None = None
        self.value_scales: torch.Tensor | None = None

    def _store(self, buf: torch.Tensor | None, scales: torch.Tensor | None, x: torch.Tensor, end: int):
        b, h, s, d = x.shape
        if buf is None:
            buf = x.new_empty(b, h, self.max_length, d, dtype=torch.int8 if self.bits else x.dtype)
            if self.bits:
                scales = x.new_empty(b, h, self.max_length, 1, dtype=torch.float32)
        if self.bits:
            codes, scale = activation_codes(x, self.bits)
            buf[:, :, self.length:end] = codes
            scales[:, :, self.length:end] = scale
        else:
            buf[:, :, self.length:end] = x
        return buf, scales

    def _read(self, buf: torch.Tensor, scales: torch.Tensor | None, end: int, dtype: torch.dtype) -> torch.Tensor:
        if not self.bits:
            return buf[:, :, :end]
        return buf[:, :, :end].float().div_(scales[:, :, :end]).to(dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were requested")
        self.keys, self.key_scales = self._store(self.keys, self.key_scales, k, end)
        self.values, self.value_scales = self._store(self.values, self.value_scales, v, end)
        self.length = end
        return (self._read(self.keys, self.key_scales, end, k.dtype),
                self._read(self.values, self.value_scales, end, v.dtype))


class KVCache:
    """Per-layer key/value caches for incremental decoding; `length` is the number of cached positions."""

    def __init__(self, num_layers: int, max_length: int, bits: int | None = None) -> None:
        self.layers = [LayerKVCache(max_length, bits) for _ in range(num_layers)]
        self.max_length = max_length
        self.bits = bits

    @property
    def length(self) -> int:
        return self.layers[0].length


def _cached_causal_mask(past: int, s: int, device: torch.device) -> torch.Tensor:
    """[S, past + S] boolean mask: new query i sees every cached position and new positions <= i."""
    return torch.ones(s, past + s, dtype=torch.bool, device=device).tril(diagonal=past)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=cfg.attention_out_bias)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.kv_bits: int | None = None
        """Quantize keys (after RoPE) and values to this many bits per head and token (None: off)."""
        self.q_rotated, self.k_rotated = nn.Identity(), nn.Identity()
        """Pass-throughs of Q and K [B, heads, S, head_dim] as attention uses them (after norms and RoPE):
        recording points for forward hooks (attention-relation distillation); no parameters."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = self.q_rotated(apply_rotary(q, cos, sin)), self.k_rotated(apply_rotary(k, cos, sin))
        gqa = self.num_kv_heads != self.num_heads
        if cache is None and self.kv_bits:
            k, v = quantize_activation(k, self.kv_bits), quantize_activation(v, self.kv_bits)
        if cache is not None:
            if cache.bits != self.kv_bits:
                raise ValueError(f"KV cache quantizes to {cache.bits} bits, attention to {self.kv_bits}: build the "
                                 "cache with model.new_cache after model.set_kv_bits")
            past = cache.length
            k, v = cache.update(k, v)
            if past > 0:  # with nothing cached, the plain causal path below is the same computation
                mask = None if s == 1 else _cached_causal_mask(past, s, x.device)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
                return self.o_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(f, d, bias=cfg.mlp_bias)
        self.relu2 = cfg.hidden_act == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.relu(gate).square() if self.relu2 else F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask=None, cache: LayerKVCache | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        past = 0
        if cache is not None:
            if attention_mask is not None:
                raise ValueError("a KV cache is used with unpadded batches only (attention_mask=None)")
            past = cache.length
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(positions, x.dtype)
        attn_mask = _causal_padding_mask(attention_mask) if attention_mask is not None else None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, None if cache is None else cache.layers[i])
        return self.norm(x)


def _causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 1/0 validity -> [B, 1, S, S] boolean mask (causal and keys that are not padding).

    Rows of padding queries keep their own key so that no row is fully masked (no NaN)."""
    s = attention_mask.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).tril()
    mask = causal[None] & attention_mask.bool()[:, None, :]
    mask = mask | torch.eye(s, dtype=torch.bool, device=attention_mask.device)[None]
    return mask[:, None]


class CausalLM(nn.Module):
    """Decoder plus lm_head; `forward` returns logits [B, S, V]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for linears and embeddings, zero biases, ones for norms.

        With depth_scaled_init the residual branches' output projections (o_proj, down_proj) start at
        initializer_range / sqrt(2 * num_hidden_layers), as GPT-2 and Megatron-LM initialize them.
        """
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers) if self.config.depth_scaled_init else std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, out_std if name.endswith(("o_proj", "down_proj")) else std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        return self.lm_head(self.model(input_ids, attention_mask, cache))

    def new_cache(self, max_length: int) -> KVCache:
        """An empty KV cache for generating up to `max_length` positions (quantized as set_kv_bits says)."""
        return KVCache(len(self.model.layers), max_length, self.kv_bits)

    @property
    def kv_bits(self) -> int | None:
        return self.model.layers[0].self_attn.kv_bits if len(self.model.layers) else None

    def set_kv_bits(self, bits: int | None) -> None:
        """Quantize attention keys and values to `bits` (per head and token, absmax), or None for full precision."""
        if bits is not None and not (isinstance(bits, int) and 2 <= bits <= 8):
            raise ValueError(f"kv bits must be None or an integer from 2 to 8, got {bits!r}")
        for layer in self.model.layers:
            layer.self_attn.kv_bits = bits

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.model.embed_tokens.weight), None)
            params.pop(id(self.lm_head.weight), None)
        return sum(p.numel() for p in params.values())
