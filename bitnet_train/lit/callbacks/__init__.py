"""Training callbacks, one per file."""

from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback
from bitnet_train.lit.callbacks.stage import StageCallback, StageRichProgressBar

__all__ = ["QuantStatsCallback", "StageCallback", "StageRichProgressBar"]
