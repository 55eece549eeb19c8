#!/bin/sh
# One-shot MinIO set-up, run by the minio-init service (docker-compose.yml) and the
# gansweep-minio-init Job (k8s/):
#   - the buckets `mlflow` (MLflow artifacts) and `gansweep` (Ray Tune checkpoints);
#   - an application user (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) whose policy reaches only
#     those two buckets, so that no service but this one holds the MinIO root credentials.
# Idempotent: safe to run on every start. Plain sh with no grep/sed: the mc image is minimal.
# A copy lives in k8s/minio/ (kustomize reads files only below k8s/); tests keep them identical.
set -eu

: "${MINIO_ENDPOINT:=http://minio:9000}"
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID is not set}"
: "${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is not set}"
: "${GANSWEEP_BUCKETS:=mlflow gansweep}"
: "${GANSWEEP_POLICY_FILE:=/etc/gansweep/minio/gansweep-policy.json}"
export MC_CONFIG_DIR="${MC_CONFIG_DIR:-/tmp/.mc}"

mc alias set gansweep "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

for bucket in $GANSWEEP_BUCKETS; do
    mc mb --ignore-existing "gansweep/$bucket"
done

mc admin policy create gansweep gansweep-rw "$GANSWEEP_POLICY_FILE"
mc admin user add gansweep "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"

if out=$(mc admin policy attach gansweep gansweep-rw --user "$AWS_ACCESS_KEY_ID" 2>&1); then
    printf '%s\n' "$out"
else
    case "$out" in
        *already*) echo "policy gansweep-rw is already attached to $AWS_ACCESS_KEY_ID" ;;
        *) printf '%s\n' "$out" >&2; exit 1 ;;
    esac
fi
echo "minio-init: buckets ($GANSWEEP_BUCKETS) and user $AWS_ACCESS_KEY_ID are ready"
