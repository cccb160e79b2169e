#!/usr/bin/env bash
# Run a command in the bitnet_train image on this machine's GPUs (build it first: docker build -t bitnet-train .).
#
#   launch/docker/run.sh python -m bitnet_train trainer=gpu
#   GPUS='"device=0,1"' launch/docker/run.sh python -m bitnet_train trainer=gpu trainer.devices=2 strategy=ddp
#   launch/docker/run.sh python -m bitnet_train.consolidate outputs/pretrain/<date>/checkpoints/last.ckpt
#
# The current folder is mounted at /work (the container's working folder), so outputs/ and your
# data land on the host, owned by you. Settings: IMAGE (default bitnet-train:latest), GPUS (default
# all; "none" for CPU only), EXTRA_DOCKER_ARGS (more docker run options). W&B and Hugging Face
# credentials are passed through when set.
set -euo pipefail

IMAGE=${IMAGE:-bitnet-train:latest}
GPUS=${GPUS:-all}

if [ "$#" -eq 0 ]; then
    set -- python -m bitnet_train --help
fi

args=(--rm --ipc=host --ulimit memlock=-1 --ulimit stack=67108864
      --user "$(id -u):$(id -g)" --env HOME=/tmp
      --volume "${PWD}:/work" --workdir /work)
if [ "$GPUS" != "none" ]; then
    args+=(--gpus "$GPUS")
fi
if [ -t 0 ] && [ -t 1 ]; then
    args+=(--interactive --tty)
fi
for var in WANDB_API_KEY WANDB_MODE WANDB_PROJECT HF_TOKEN; do
    if [ -n "${!var:-}" ]; then
        args+=(--env "$var")
    fi
done
# shellcheck disable=SC2206  # word splitting of the extra options is intended
extra=(${EXTRA_DOCKER_ARGS:-})

exec docker run "${args[@]}" "${extra[@]}" "$IMAGE" "$@"
