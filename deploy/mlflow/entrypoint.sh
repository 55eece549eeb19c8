#!/bin/sh
# Starts the MLflow tracking server with basic auth (`--app-name basic-auth`).
#
# MLflow's basic-auth app reads an ini file named by MLFLOW_AUTH_CONFIG_PATH; it takes the
# admin's name and password from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD and
# creates that admin on the first start against an empty user store (MLflow ships no default
# password). This script writes the ini at start-up from the environment, so that no password
# is ever stored in the image or the repository. Every required variable must be non-empty.
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?MLFLOW_BACKEND_STORE_URI is not set}"
: "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI is not set}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?MLFLOW_AUTH_ADMIN_USERNAME is not set}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?MLFLOW_AUTH_ADMIN_PASSWORD is not set}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is not set (CSRF key of the auth app)}"

config_dir="${MLFLOW_AUTH_CONFIG_DIR:-/tmp/mlflow-auth}"
mkdir -p "$config_dir"
umask 077
# configparser reads % as interpolation syntax: double it (URL-encoded passwords contain %).
auth_db_uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${auth_db_uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"

exec mlflow server --app-name basic-auth "$@"
