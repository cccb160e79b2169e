"""Step time of BitDistill's stage 3 vs plain cross-entropy QAT for the same ternary student, side by side.

    python tools/bench_distill_step.py --teacher teachers/smollm2-135m --seq-len 128 --batch-size 4
    python tools/bench_distill_step.py --tiny          # a random 4-layer Qwen2 teacher, no files needed

All variants train the same student (built from the teacher as stage 1 does) with Lightning on the same
batches of token ids in one process, and every optimizer step (forward, backward, clipping, AdamW) is
timed with a callback. The variants take turns in `--rounds` rounds of `--warmup` + `--steps` steps, so
that a change of load on a shared machine hits all of them (the order rotates from round to round); the
first steps of each round are dropped and the median over all rounds is reported, as wall-clock time and
as process CPU time. On a busy shared machine use `--threads 1`: its CPU time counts the work done and
not the waiting (with several threads, OpenMP's spin-waiting for a descheduled thread counts too). Distillation
variants: logits only, logits + attention relations, and logits from the top-k cache (the teacher then
runs only up to the distilled layer). Prints a table and the ratios to QAT.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bitnet_train.config import ModelConfig, OptimConfig, QuantConfig, to_dict
from bitnet_train.distill.config import DistillStageConfig, BitDistillConfig
from bitnet_train.distill.logit_cache import TeacherLogitCache
from bitnet_train.distill.losses import teacher_top_k
from bitnet_train.distill.student import load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import load_teacher
from bitnet_train.lit.distill import DistillModule
from bitnet_train.lit.pretrain import PretrainModule


class RandomBlocks(Dataset):
    """Fixed random token blocks {"input_ids", "labels", "index"} (the same for every run)."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.blocks = torch.randint(0, vocab, (n, seq_len + 1), generator=g)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i, :-1], "labels": self.blocks[i, 1:], "index": torch.tensor(i)}


class StepTimer(L.Callback):
    """Wall-clock and process CPU time of every training step (CPU time is what a busy shared machine
    distorts least: waiting for a core does not count)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append((time.perf_counter() - self._t[0], time.process_time() - self._t[1]))


class _Data(L.LightningDataModule):
    def __init__(self, dataset: Dataset, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size
        self.train_blocks = dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def visited_items(self, first: int, end: int, accumulate: int = 1, rank: int = 0, world_size: int = 1):
        return list(range(min(end * self.batch_size, len(self.dataset))))


def _fit(module: L.LightningModule, data: _Data, steps: int) -> list[tuple[float, float]]:
    timer = StepTimer()
    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="teacher folder (e.g. from tools/gguf_to_hf.py --smollm2)")
    parser.add_argument("--tiny", action="store_true", help="use a random 4-layer Qwen2 teacher instead")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants (interleaved)")
    parser.add_argument("--relation-heads", type=int, default=32)
    parser.add_argument("--layer", type=int, default=-6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    if args.tiny:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from distill_helpers import make_teacher

        args.teacher = str(make_teacher(tmp / "teacher", num_hidden_layers=4, hidden_size=256, intermediate_size=688,
                                        num_attention_heads=4, num_key_value_heads=4))
        args.layer = min(args.layer, -1) if args.layer >= -4 else -2
    if not args.teacher:
        parser.error("give --teacher PATH or --tiny")
    distill = BitDistillConfig(teacher=args.teacher)
    teacher = load_teacher(distill)
    model_cfg = student_model_config(teacher, distill, ModelConfig())
    quant = QuantConfig(norm="subln")
    optim = OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.01)
    steps = args.warmup + args.steps
    data = _Data(RandomBlocks(steps * args.batch_size, args.seq_len, model_cfg.vocab_size), args.batch_size)
    weights = None

    def student(cls, **kwargs):
        nonlocal weights
        module = cls(to_dict(model_cfg), to_dict(quant), to_dict(optim), **kwargs)
        if weights is None:
            load_teacher_weights(module.model, teacher.model.state_dict())
            weights = module.model.state_dict()
        else:
            module.model.load_state_dict(weights)
        return module

    attention = {"layers": [args.layer], "relation_heads": args.relation_heads}
    variants = {
        "QAT (cross-entropy)": (PretrainModule, None, False),
        "distill: logits": (DistillModule, {"attention_weight": 0.0}, False),
        "distill: logits + relations": (DistillModule, {"attention": attention}, False),
        "distill: cached logits + relations": (DistillModule, {"attention": attention,
                                                               "logit_cache": {"enabled": True}}, True),
    }
    modules = {}
    for name, (cls, kd, cached) in variants.items():
        torch.manual_seed(0)
        if cls is PretrainModule:
            modules[name] = student(cls)
            continue
        module = student(cls, distill=to_dict(DistillStageConfig(**kd)))
        cache = None
        if cached:
            cache = TeacherLogitCache(tmp / "cache", len(data.dataset), args.seq_len, 64, {"bench": 1})
            cache.create()
            cache.open()
            with torch.no_grad():  # filled before timing, as the precompute pass before stage 3 does
                ids = data.dataset.blocks[:, :-1]
                for start in range(0, len(ids), args.batch_size):
                    rows = list(range(start, min(start + args.batch_size, len(ids))))
                    cache.store(rows, *teacher_top_k(teacher(ids[rows]).logits, 64, module.kd.temperature))
        module.attach_teacher(teacher, cache)
        module.on_train_start = lambda: None  # the cache is already filled
        modules[name] = module
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
    names = list(modules)
    for round_ in range(args.rounds):  # interleaved, so that a change of machine load hits every variant
        shift = round_ % len(names)  # and each variant takes every place in the order
        for name in names[shift:] + names[:shift]:
            times[name] += _fit(modules[name], data, steps)[args.warmup:]
            print(f"round {round_ + 1}: {name:38s} wall {statistics.median(t[0] for t in times[name]):7.2f} s, "
                  f"cpu {statistics.median(t[1] for t in times[name]):7.2f} s per step so far", flush=True)
    wall = {name: statistics.median(t[0] for t in values) for name, values in times.items()}
    cpu = {name: statistics.median(t[1] for t in values) for name, values in times.items()}
    base_wall, base_cpu = wall["QAT (cross-entropy)"], cpu["QAT (cross-entropy)"]
    tokens = args.batch_size * args.seq_len
    print(f"\nteacher {args.teacher} | batch {args.batch_size} x {args.seq_len} = {tokens} tokens/step | "
          f"threads {torch.get_num_threads()} | device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"median of {args.rounds} interleaved rounds x {args.steps} timed steps per variant")
    print("| variant | wall s/step | ratio to QAT | CPU s/step | ratio to QAT |")
    print("|---|---:|---:|---:|---:|")
    for name in wall:
        print(f"| {name} | {wall[name]:.2f} | {wall[name] / base_wall:.2f} | {cpu[name]:.2f} | "
              f"{cpu[name] / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
