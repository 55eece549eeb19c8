# syntax=docker/dockerfile:1
#
# The gansweep image: Ray head and workers, and the sweep driver, in docker-compose.yml and in
# the KubeRay RayCluster/RayJob of k8s/. It installs the project the way the README does.
#
#   docker build -t gansweep:latest .
#   docker build --build-arg UID="$(id -u)" --build-arg GID="$(id -g)" -t gansweep:latest .
#     (the second form makes files the container writes into bind mounts yours)
FROM python:3.11-slim

ARG UID=1000
ARG GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with numeric ids, so that Kubernetes can check runAsNonRoot.
RUN groupadd --gid "${GID}" gansweep \
 && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /bin/bash gansweep

WORKDIR /app

# PyTorch first, in a layer of its own: by far the largest download, and the one that changes
# least often, so that editing the project does not download it again. PyPI's default Linux
# wheels are the CUDA builds. The pins satisfy pyproject.toml's ranges (a tested pair).
RUN pip install --no-cache-dir "torch==2.15.0" "torchvision==0.29.2"

COPY . /app
RUN pip install --no-cache-dir ".[cluster]" \
 && mkdir -p /app/runs /data \
 && chown "${UID}:${GID}" /app/runs /data

USER ${UID}:${GID}
# Datasets that trials download land on /data (a shared volume in docker-compose.yml).
ENV GANSWEEP_CACHE=/data/cache

# No ENTRYPOINT: KubeRay and docker-compose.yml give each container its own command.
CMD ["gansweep", "--help"]
