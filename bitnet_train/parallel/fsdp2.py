"""FSDP2 (per-parameter sharding, `torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy.

Every rank holds 1/world of each parameter, gradient and optimizer state. Sharding follows
torchtitan's recipe: `fully_shard` on each decoder layer (one all-gather per layer in forward and
backward, freed again after use), then on the whole CausalLM for what is left (embeddings, the tied
lm_head, the final norm). The LightningModule itself is never wrapped; its `configure_model` calls
`shard_decoder` once the strategy has built the device mesh.

BitLinear stays exact: inside a wrapped layer's forward every parameter is the all-gathered, whole
matrix, so gamma = mean|W| is computed over all of W (docs/METHODS.md#distributed-sharding), as in one process.
"""

from __future__ import annotations

import torch.nn as nn
from lightning.pytorch.strategies import ModelParallelStrategy

from bitnet_train.config import ConfigError


def shard_decoder(model: nn.Module, mesh, reshard_after_forward: bool = True, gather: str = "latent") -> nn.Module:
    """Apply FSDP2 to a CausalLM in place: each decoder layer, then the root. Idempotent.

    gather="codes": fully quantized BitLinear weights are all-gathered as int8 ternary codes and one
    scale instead of fp32 (parallel/ternary_gather.py); gather="packed": those codes packed 2 bits each."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return model
    if gather in ("codes", "packed"):
        from bitnet_train.parallel.ternary_gather import wrap_for_code_gather

        wrap_for_code_gather(model, packed=gather == "packed")
    # no per-step weight-code cache under FSDP2: it would keep every layer's gathered codes resident
    for module in model.modules():
        if hasattr(module, "weight_cache_enabled"):
            module.weight_cache_enabled = False
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy whose data-parallel (sharding) dimension spans every rank of every node.

    Lightning's default mesh is (nodes) x (devices per node) for FSDP x tensor parallelism; this
    model uses no tensor parallelism, so the mesh is (world size) x 1 and `fully_shard` shards over
    all ranks. Checkpoints are distributed (a folder of per-rank shards, `torch.distributed.checkpoint`);
    `python -m bitnet_train.consolidate` turns one into a single file.
    """

    def __init__(self, reshard_after_forward: bool = True, gather: str = "latent", **kwargs) -> None:
        from bitnet_train.parallel.ternary_gather import GATHER_MODES

        if gather not in GATHER_MODES:
            raise ConfigError(f"strategy.gather={gather!r}; choose one of {', '.join(GATHER_MODES)} (codes: all-gather "
                              "int8 ternary codes of fully quantized BitLinear weights instead of fp32; packed: "
                              "those codes 2 bits each)")
        self.gather = gather
        if kwargs.pop("save_distributed_checkpoint", True) is not True:
            # Lightning's single-file mode writes optimizer states in another layout than DDP files, and
            # nothing tells the two apart on disk: one checkpoint kind per strategy keeps resume checkable.
            raise ConfigError("strategy=fsdp2 writes sharded checkpoint folders; for one file run "
                              "python -m bitnet_train.consolidate CHECKPOINT")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None):
        # Lightning 2.6 does not pass fit(weights_only=...) on to strategies that restore after setup,
        # and torch's weights-only unpickler refuses the numpy RNG states our checkpoints carry in
        # meta.pt. These are the run's own checkpoints, read as AtomicCheckpointIO reads single files.
        return super().load_checkpoint(checkpoint_path, weights_only=False if weights_only is None else weights_only)
