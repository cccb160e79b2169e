"""Score the same lm-eval tasks on the same transformers export with our LM class (bitnet_train.evaluate.lm)
and with lm-eval's own `hf` backend, side by side in one run; prints scores, seconds and tokens/s.

    python tools/bench_eval.py EXPORT_FOLDER --tasks austen_cloze,austen_novel --limit 50 --batch-size 8
tokens/s counts the continuation tokens the requests score (the same for both backends). The backends
alternate for --rounds rounds (each round scores every task once on each) and each reports its fastest
round, so neither gains from running second; stderr bootstrapping is off (it is not model time).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export")
    p.add_argument("--tasks", default="austen_cloze,austen_novel")
    p.add_argument("--limit", type=float, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from lm_eval.models.huggingface import HFLM

    from bitnet_train.evaluate.harness import run_tasks, summarize
    from bitnet_train.evaluate.lm import BitnetLM
    from bitnet_train.evaluate.task_names import check_tasks

    tasks = check_tasks(args.tasks.split(","))
    ours = BitnetLM(path=args.export, batch_size=args.batch_size, device=args.device)
    theirs = HFLM(pretrained=args.export, backend="causal", batch_size=args.batch_size, device=args.device,
                  max_length=ours.max_length, prefix_token_id=ours.eot_token_id)
    rows: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, lm in (("bitnet_train", ours), ("hf", theirs)):
            ours.tokens_scored = 0  # our class counts the scored tokens of one round (hf's are the same)
            start = time.perf_counter()
            scores = summarize(run_tasks(lm, tasks, limit=args.limit, verbosity="ERROR", bootstrap_iters=0))
            seconds = time.perf_counter() - start
            best = rows.setdefault(name, {"seconds": float("inf")})
            best["seconds"], best["scores"] = min(best["seconds"], seconds), scores
            if lm is ours:
                tokens = ours.tokens_scored
    for row in rows.values():
        row["tokens"], row["tokens_per_s"] = tokens, tokens / row["seconds"]
    rows["ratio_ours_over_hf_tokens_per_s"] = rows["bitnet_train"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
