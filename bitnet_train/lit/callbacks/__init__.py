"""Training callbacks, one per file (the evaluation callback lives with the evaluator: bitnet_train/evaluate/)."""

from bitnet_train.lit.callbacks.faults import NonFiniteGuard
from bitnet_train.lit.callbacks.model_summary import ModelTable
from bitnet_train.lit.callbacks.progress import StepProgressBar
from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback
from bitnet_train.lit.callbacks.slurm_requeue import SlurmRequeue
from bitnet_train.lit.callbacks.spike_monitor import SpikeMonitor
from bitnet_train.lit.callbacks.stage import StageCallback
from bitnet_train.lit.callbacks.step_plan import StepPlanCallback
from bitnet_train.lit.callbacks.transitions import TransitionCallback

__all__ = ["ModelTable", "NonFiniteGuard", "QuantStatsCallback", "SlurmRequeue", "SpikeMonitor", "StageCallback",
           "StepPlanCallback", "StepProgressBar", "TransitionCallback"]
