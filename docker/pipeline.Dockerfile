# lora-pipeline image: the pipeline package + Prefect, used by the Prefect workers in
# docker-compose.yml (worker-cpu; worker-gpu once it is enabled).
#
# Build from the repository root (the build context must be the repo):
#   docker build -f docker/pipeline.Dockerfile -t lora-pipeline .
# GPU variant (later issue): pass a CUDA wheel index, e.g.
#   docker build -f docker/pipeline.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t lora-pipeline:gpu .
#
# NOTE: `COPY . .` copies the whole build context. Keep local virtualenvs (.venv,
# .venv-labelstudio), .git, work/ and mlruns/ out of it with a .dockerignore at the
# repo root (or docker/pipeline.Dockerfile.dockerignore), or the image gets huge.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# HF_HOME: Hugging Face downloads (base models) persist on the work volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
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

# The worker command (create pool if missing, `prefect worker start`) is set in
# docker-compose.yml; this default just shows the CLI.
CMD ["lora-pipeline", "--help"]
