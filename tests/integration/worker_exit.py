"""How the torchrun workers of these tests end: results are written, then the process leaves at once.

A gloo process group runs its collectives on worker threads, and a thread that has just finished
an all-gather drops the work's tensors afterwards; a tensor with a Python object needs the GIL to
go. If the main thread has meanwhile reached interpreter shutdown, taking the GIL ends the thread
and C++ aborts the process ("terminate called without an active exception", SIGABRT) after the
worker's results were already written. It happened to sharded_bitlinear_worker.py in about one
run in ten on a 2-core machine: PyTorch's open issue "Improve mean time to detect the issue by
adding warning logs when users miss to call destroy_process_group" (#190489) traces the same stack.
DeepSpeed keeps references to the process group, so destroy_process_group() alone does not stop
those threads. A barrier lets every rank's collectives finish; os._exit then skips the
interpreter's teardown, which is all that is left to do.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def end_worker() -> None:
    """Barrier, end the process group, flush the streams and exit 0 without interpreter teardown."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
