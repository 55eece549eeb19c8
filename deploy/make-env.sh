#!/bin/sh
# Writes .env for docker-compose.yml from .env.example, filling every empty (required) value
# with a fresh random secret. Refuses to overwrite an existing file.
#
#   sh deploy/make-env.sh            # writes ./.env (run from the repository root)
#   sh deploy/make-env.sh PATH       # writes PATH instead
set -eu

here=$(cd "$(dirname "$0")" && pwd)
example="$here/../.env.example"
target="${1:-.env}"

if [ -e "$target" ]; then
    echo "make-env: $target exists; not overwriting it (its passwords are already in use)." >&2
    exit 1
fi

secret() {
    # 48 hex characters: URL-safe, so it can sit inside connection URLs unescaped.
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 24
    else
        python3 -c 'import secrets; print(secrets.token_hex(24))'
    fi
}

umask 077
tmp="$target.tmp.$$"
trap 'rm -f "$tmp"' EXIT
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        [A-Z]*=) printf '%s%s\n' "$line" "$(secret)" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$example" > "$tmp"
mv "$tmp" "$target"
trap - EXIT
echo "make-env: wrote $target with new random secrets." >&2
