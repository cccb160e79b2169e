"""Training callbacks, one per file."""

from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback

__all__ = ["QuantStatsCallback"]
