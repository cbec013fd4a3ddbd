# lora-pipeline image: the pipeline package + Prefect, used by the Prefect workers and
# the webhook receiver in docker-compose.yml (worker-cpu and webhooks: lora-pipeline:latest;
# worker-gpu, profile `gpu`: lora-pipeline:gpu).
#
# Build from the repository root (the build context must be the repo):
#   docker build -f docker/pipeline.Dockerfile -t lora-pipeline .
# GPU variant: the same image with a CUDA torch wheel (the wheel bundles the CUDA runtime;
# the host needs the NVIDIA driver + NVIDIA Container Toolkit). Pick the index that
# matches the host driver, e.g.
#   docker build -f docker/pipeline.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t lora-pipeline:gpu .
# (`docker compose --profile gpu build` does this, with GPU_TORCH_INDEX_URL from .env.)
#
# NOTE: `COPY . .` copies the whole build context. Keep local virtualenvs (.venv,
# .venv-labelstudio), .git, work/ and mlruns/ out of it with a .dockerignore at the
# repo root (or docker/pipeline.Dockerfile.dockerignore), or the image gets huge.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# LORA_PIPELINE_HOME: where the repo is baked in; prefect.yaml's pull step runs flows there.
# LORA_PIPELINE_WORK_DIR: snapshots and run outputs; a named volume shared by the workers.
# LORA_PIPELINE_CONFIG: the pipeline config the flows use unless a run passes another.
# HF_HOME: Hugging Face downloads (base models) persist on the work volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LORA_PIPELINE_HOME=/opt/lora-pipeline \
    LORA_PIPELINE_WORK_DIR=/var/lib/lora-pipeline \
    LORA_PIPELINE_CONFIG=/opt/lora-pipeline/configs/default.yaml \
    HF_HOME=/var/lib/lora-pipeline/hf-home

# torch first, from the PyTorch index, in its own layer: it is the biggest dependency
# and changes far less often than the code. The CPU build avoids pulling ~GBs of CUDA
# wheels. `pip install .` below then sees torch as already satisfied (2.13.0+cpu
# satisfies a `torch==2.13.0` / `torch>=...` requirement) and keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# The repo lives where prefect.yaml's pull step (set_working_directory) expects it,
# so flow entrypoints such as flows/pipeline_flow.py and configs/ resolve there.
WORKDIR /opt/lora-pipeline
COPY . .
RUN pip install . \
    && lora-pipeline --help > /dev/null

# Unprivileged runtime user; /var/lib/lora-pipeline is the flows' work_dir and is
# mounted as a named volume (it inherits this ownership when first created).
RUN useradd --create-home --uid 10001 pipeline \
    && mkdir -p /var/lib/lora-pipeline \
    && chown -R pipeline:pipeline /var/lib/lora-pipeline
USER pipeline

# The commands (`lora-pipeline worker --pool cpu|gpu ...`, `lora-pipeline webhook-receiver`)
# are set in docker-compose.yml; this default just shows the CLI.
CMD ["lora-pipeline", "--help"]
