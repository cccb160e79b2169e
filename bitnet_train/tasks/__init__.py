"""What a run does, one module per task (`task: pretrain | distill`), built on one shared trainer layer.

`trainer.py` builds every Trainer (callbacks, loggers, strategy, Slurm requeue, step plans, checkpoint IO)
and finishes every run (metrics.json, process-group teardown); `checks.py` holds the pre-compute checks
both tasks share. `bitnet_train.run` picks the task from its table.
"""
