"""Training callbacks, one per file."""

from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback
from bitnet_train.lit.callbacks.slurm_requeue import SlurmRequeue

__all__ = ["QuantStatsCallback", "SlurmRequeue"]
