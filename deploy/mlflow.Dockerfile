# syntax=docker/dockerfile:1
#
# The MLflow tracking server of docker-compose.yml and k8s/: PostgreSQL backend store,
# artifacts proxied to S3/MinIO (clients need no S3 keys), basic auth.
# Build context: the repository root (docker compose does this; by hand:
#   docker build -f deploy/mlflow.Dockerfile -t gansweep-mlflow:3.17.2 .)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mlflow[auth] brings Flask-WTF, which the basic-auth app needs; the version matches the
# client pinned in pyproject.toml.
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5"

RUN groupadd --gid 1000 mlflow \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mlflow

COPY --chmod=0755 deploy/mlflow/entrypoint.sh /usr/local/bin/mlflow-entrypoint

USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow-entrypoint"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
