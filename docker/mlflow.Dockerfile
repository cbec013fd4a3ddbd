# MLflow tracking server image for the lora-pipeline stack (see docker-compose.yml).
#
# Build:  docker build -f docker/mlflow.Dockerfile -t lora-pipeline-mlflow .
# The full `mlflow` package is needed (not mlflow-skinny): `mlflow server` and the
# artifact proxy (--artifacts-destination) live there. psycopg2-binary is the driver
# for the postgresql:// backend store.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow==${MLFLOW_VERSION}" psycopg2-binary

# Run as an unprivileged user. /mlartifacts is created here, owned by that user, so a
# fresh named volume mounted on it inherits the ownership.
RUN useradd --system --create-home --uid 10001 mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER mlflow
WORKDIR /home/mlflow

EXPOSE 5000

# The real command (backend store URI, allowed hosts, ...) is set in docker-compose.yml.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--artifacts-destination", "/mlartifacts"]
