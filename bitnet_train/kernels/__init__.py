"""Ternary (W2A8) matmul: bit layouts, a torch reference, a Triton kernel and the dispatch between them."""

from bitnet_train.kernels.dispatch import resolve_backend, ternary_matmul
from bitnet_train.kernels.packing import pack_hf, pack_k2, pack_k3, unpack_hf, unpack_k2, unpack_k3
from bitnet_train.kernels.reference import ternary_matmul_int32_reference, ternary_matmul_reference

__all__ = ["pack_hf", "pack_k2", "pack_k3", "resolve_backend", "ternary_matmul", "ternary_matmul_int32_reference",
           "ternary_matmul_reference", "unpack_hf", "unpack_k2", "unpack_k3"]
