#!/bin/sh
# Creates the Secrets that k8s/ expects, in namespace $NAMESPACE (default gansweep).
#
#   sh deploy/k8s-secrets.sh              # kubectl apply them to the current context
#   sh deploy/k8s-secrets.sh --dry-run    # print the manifests instead (needs no cluster)
#
# Each value comes from the environment variable of the same name as in .env.example when it
# is set, else a fresh random secret (user names have defaults). To reuse the compose settings:
#   set -a; . ./.env; set +a; sh deploy/k8s-secrets.sh
# PostgreSQL, MinIO and MLflow keep the passwords they were first started with, so the script
# refuses to replace existing Secrets unless FORCE=1 (rotate passwords by hand first).
# For a managed PostgreSQL set POSTGRES_HOST (and POSTGRES_PORT, POSTGRES_SSLMODE).
set -eu

dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
ns="${NAMESPACE:-gansweep}"
kubectl="${KUBECTL:-kubectl}"

secret() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 24
    else
        python3 -c 'import secrets; print(secrets.token_hex(24))'
    fi
}

: "${POSTGRES_USER:=gansweep}"
: "${POSTGRES_PASSWORD:=$(secret)}"
: "${POSTGRES_HOST:=postgres}"
: "${POSTGRES_PORT:=5432}"
: "${MINIO_ROOT_USER:=minio-admin}"
: "${MINIO_ROOT_PASSWORD:=$(secret)}"
: "${AWS_ACCESS_KEY_ID:=gansweep}"
: "${AWS_SECRET_ACCESS_KEY:=$(secret)}"
: "${MLFLOW_ADMIN_USERNAME:=admin}"
: "${MLFLOW_ADMIN_PASSWORD:=$(secret)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:=$(secret)}"
: "${RAY_AUTH_TOKEN:=$(secret)}"

pg="postgresql+psycopg2://${POSTGRES_USER}:${POSTGRES_PASSWORD}@${POSTGRES_HOST}:${POSTGRES_PORT}"
query="${POSTGRES_SSLMODE:+?sslmode=$POSTGRES_SSLMODE}"

names="gansweep-postgres gansweep-minio gansweep-s3 gansweep-mlflow gansweep-runtime gansweep-ray-auth"
if [ "$dry_run" -eq 0 ] && [ "${FORCE:-0}" != 1 ]; then
    for name in $names; do
        if "$kubectl" -n "$ns" get secret "$name" >/dev/null 2>&1; then
            echo "k8s-secrets: Secret $ns/$name exists; not replacing it (FORCE=1 to override)." >&2
            exit 1
        fi
    done
fi

manifests() {
    one_secret() {
        name=$1
        shift
        "$kubectl" create secret generic "$name" --namespace "$ns" --dry-run=client -o yaml "$@"
        echo "---"
    }
    one_secret gansweep-postgres \
        --from-literal=POSTGRES_USER="$POSTGRES_USER" \
        --from-literal=POSTGRES_PASSWORD="$POSTGRES_PASSWORD"
    one_secret gansweep-minio \
        --from-literal=MINIO_ROOT_USER="$MINIO_ROOT_USER" \
        --from-literal=MINIO_ROOT_PASSWORD="$MINIO_ROOT_PASSWORD"
    one_secret gansweep-s3 \
        --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
        --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
    one_secret gansweep-mlflow \
        --from-literal=MLFLOW_BACKEND_STORE_URI="$pg/mlflow$query" \
        --from-literal=MLFLOW_AUTH_DATABASE_URI="$pg/mlflow_auth$query" \
        --from-literal=MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_ADMIN_USERNAME" \
        --from-literal=MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD" \
        --from-literal=MLFLOW_FLASK_SERVER_SECRET_KEY="$MLFLOW_FLASK_SERVER_SECRET_KEY"
    one_secret gansweep-runtime \
        --from-literal=MLFLOW_TRACKING_USERNAME="$MLFLOW_ADMIN_USERNAME" \
        --from-literal=MLFLOW_TRACKING_PASSWORD="$MLFLOW_ADMIN_PASSWORD" \
        --from-literal=GANSWEEP_OPTUNA_STORAGE="$pg/optuna$query"
    one_secret gansweep-ray-auth \
        --from-literal=auth_token="$RAY_AUTH_TOKEN"
}

if [ "$dry_run" -eq 1 ]; then
    manifests
else
    manifests | "$kubectl" apply -f -
fi
