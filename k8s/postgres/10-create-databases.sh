#!/bin/bash
# Creates the databases gansweep's services use, owned by POSTGRES_USER:
#   mlflow       MLflow's tracking and model-registry store
#   mlflow_auth  MLflow's basic-auth users and permissions
#   optuna       Optuna's studies (GANSWEEP_OPTUNA_STORAGE)
# The postgres image runs this once, when it initialises an empty data directory.
# A copy lives in k8s/postgres/ (kustomize reads files only below k8s/); tests/test_deploy.py
# keeps the two identical.
set -euo pipefail

for db in mlflow mlflow_auth optuna; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
