# bitnet_train for GPU machines and clusters: CUDA runtime base, Python from uv, pinned torch,
# the package with its distributed extra (DeepSpeed, submitit), run as a non-root user.
#
#   docker build -t bitnet-train .
#   launch/docker/run.sh python -m bitnet_train trainer=gpu strategy=fsdp2 trainer.devices=8
#
# torch's CUDA wheels carry their own CUDA libraries; the host needs an NVIDIA driver new enough
# for them and the NVIDIA container toolkit (docker run --gpus ...).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM ${CUDA_IMAGE}

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1

COPY --from=uv /uv /uvx /usr/local/bin/

# Python and torch first: the largest layers, rebuilt only when their versions change.
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv \
    && uv pip install "torch==${TORCH_VERSION}"

WORKDIR /opt/bitnet_train
COPY pyproject.toml README.md ./
COPY bitnet_train ./bitnet_train
COPY conf ./conf
COPY data ./data
COPY launch ./launch
RUN uv pip install ".[distributed]" "torch==${TORCH_VERSION}" \
    && python -c "import bitnet_train.parallel.deepspeed, bitnet_train.run"

# A non-root user with a fixed numeric id (ubuntu images already use 1000 for "ubuntu").
RUN groupadd --gid 10001 bitnet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash bitnet \
    && mkdir -p /work \
    && chown 10001:10001 /work
USER 10001:10001
WORKDIR /work

CMD ["python", "-m", "bitnet_train", "--help"]
