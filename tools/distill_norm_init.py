"""How far the unquantized stage-1 student is from its teacher, new norms at 1 against calibrated gains.

BitDistill's stage 1 adds RMSNorms (subln or all_linear) that change the function even before
quantization; `calibrate_new_norms` fits their gains on a few batches. This tool builds the student
from a teacher folder, keeps quantization off (lambdas 0), and prints the logit error against the
teacher (max and mean absolute, and the mean per-token KL) on held-out batches, for both
initializations:

    python tools/distill_norm_init.py --teacher DIR [--norms subln] [--text FILE] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.student import calibrate_new_norms, load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import load_teacher
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import quantize_model


def batches(args, vocab: int) -> list[torch.Tensor]:
    if args.text:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(args.teacher)(Path(args.text).read_text()[:400_000])["input_ids"]
        ids = torch.tensor(ids[: (len(ids) // args.seq) * args.seq]).view(-1, args.seq)
        picks = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[: 2 * args.batches * args.batch]
        ids = ids[picks]
    else:
        ids = torch.randint(4, vocab, (2 * args.batches * args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    return list(ids.split(args.batch))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--norms", default="subln", choices=("subln", "all_linear"))
    ap.add_argument("--text", default=None, help="a text file to take batches from (default: random token ids)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2, help="calibration batches (as many held out)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    teacher = load_teacher(BitDistillConfig(teacher=args.teacher))
    data = batches(args, teacher.vocab_size)
    calibration, held_out = data[: args.batches], data[args.batches:]
    with torch.no_grad():
        expected = [teacher(ids).logits.float() for ids in held_out]
    results = {}
    for init in ("ones", "calibrated"):
        student = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
        quantize_model(student, QuantConfig(norm=args.norms, weight_lambda=0.0, activation_lambda=0.0))
        load_teacher_weights(student, teacher.model.state_dict())
        residual = calibrate_new_norms(student, calibration) if init == "calibrated" else {}
        student.eval()
        errs, kls = [], []
        with torch.no_grad():
            for ids, ref in zip(held_out, expected):
                got = student(ids).float()
                errs.append((got - ref).abs())
                kls.append(F.kl_div(F.log_softmax(got, -1), F.log_softmax(ref, -1), log_target=True,
                                    reduction="none").sum(-1).mean())
        err = torch.cat([e.flatten() for e in errs])
        results[init] = {"logit_max_abs_err": float(err.max()), "logit_mean_abs_err": float(err.mean()),
                         "kl_per_token": float(torch.stack(kls).mean()),
                         "mean_norm_residual": (sum(residual.values()) / len(residual)) if residual else None}
    print(json.dumps({"teacher": args.teacher, "norms": args.norms, "seq": args.seq, **results}, indent=1))


if __name__ == "__main__":
    main()
