"""Training callbacks, one per file."""

from bitnet_train.lit.callbacks.activation_stage import ActivationStageCallback
from bitnet_train.lit.callbacks.evaluation import EvaluationCallback
from bitnet_train.lit.callbacks.phase_in import PhaseInCallback
from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback
from bitnet_train.lit.callbacks.slurm_requeue import SlurmRequeue
from bitnet_train.lit.callbacks.spike_monitor import SpikeMonitor
from bitnet_train.lit.callbacks.stage import StageCallback, StageRichProgressBar
from bitnet_train.lit.callbacks.transitions import TransitionCallback

__all__ = ["ActivationStageCallback", "EvaluationCallback", "PhaseInCallback", "QuantStatsCallback", "SlurmRequeue", "SpikeMonitor",
           "StageCallback", "StageRichProgressBar", "TransitionCallback"]
