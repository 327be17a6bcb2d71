#!/usr/bin/env bash
# Generated clients against the real thing: a Python client (openapi-python-client) and
# TypeScript types (openapi-typescript) generated from openapi/openapi.json, as a platform team
# would, and used.
#
# - Python: the client is generated with --fail-on-warning (a warning means a dropped operation or
#   model); check_client.py, using only that client, registers an app against a dev-target, posts
#   a joiner, waits until the account is linked, reads the provisioning log and a 422 as the
#   declared Problem model, checking every answer strictly against the generated models.
# - TypeScript: the types are generated and `tsc --noEmit --strict` checks usage.ts against them.
#
# Tools are pinned (openapi-clients/requirements.txt, package.json and package-lock.json) and
# installed from PyPI and npm into target/openapi-clients/ (ignored by git), once: a second run
# reuses them. Needs python3 (with venv), npm and the debug binary (`cargo build`).
# Runs alone too: `bash .ci/openapi-clients.sh` from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
here=.ci/openapi-clients
work=target/openapi-clients
roster=./target/debug/roster
[ -x "$roster" ] || { echo "openapi-clients: $roster is missing: run 'cargo build' first" >&2; exit 1; }
mkdir -p "$work"

# Tools, pinned; reinstalled only when the pins change.
if ! cmp -s "$here/requirements.txt" "$work/venv/requirements.txt"; then
    rm -rf "$work/venv"
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$work/venv/requirements.txt"
fi
if ! cmp -s "$here/package-lock.json" "$work/node/package-lock.json"; then
    rm -rf "$work/node"
    mkdir -p "$work/node"
    cp "$here/package.json" "$here/package-lock.json" "$work/node/"
    (cd "$work/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Python client. openapi-python-client formats its output with ruff from the venv.
rm -rf "$work/python"
mkdir -p "$work/python"
PATH="$PWD/$work/venv/bin:$PATH" openapi-python-client generate --path openapi/openapi.json \
    --meta none --output-path "$work/python/roster_client" --fail-on-warning \
    --config .ci/openapi-clients/python-client.yaml
echo "openapi-clients: Python client generated without warnings"

# A dev-target and roster on free loopback ports, on a fresh SQLite database.
run="$work/run"
rm -rf "$run"
mkdir -p "$run"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
# Waits (up to 60 s) until the file $1 holds a line matching the regex $2; prints the match.
wait_for_line() {
    for _ in $(seq 600); do
        if line=$(grep -m1 -oE "$2" "$1" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        sleep 0.1
    done
    echo "openapi-clients: nothing matching '$2' in $1 after 60 s:" >&2
    cat "$1" >&2
    return 1
}

target_token="target-secret-$RANDOM$RANDOM"
"$roster" dev-target --listen 127.0.0.1:0 --token "$target_token" >"$run/dev-target.out" 2>"$run/dev-target.err" &
pids+=($!)
target_url=$(wait_for_line "$run/dev-target.out" '^http://127\.0\.0\.1:[0-9]+/scim/v2$')

admin_token="openapi-clients-admin-$(date +%s%N)-$RANDOM$RANDOM"
ROSTER_DATABASE_URL="sqlite://$PWD/$run/roster.db?mode=rwc" \
    ROSTER_LISTEN=127.0.0.1:0 \
    ROSTER_ADMIN_TOKEN="$admin_token" \
    ROSTER_ALLOW_PRIVATE_TARGETS=true \
    ROSTER_LOG_FORMAT=json \
    RUST_LOG=info \
    "$roster" serve >"$run/roster.out" 2>"$run/roster.err" &
pids+=($!)
addr=$(wait_for_line "$run/roster.err" '"addr":"127\.0\.0\.1:[0-9]+"' | cut -d'"' -f4)

if ! ROSTER_URL="http://$addr/api/v1" ROSTER_TOKEN="$admin_token" \
    TARGET_URL="$target_url" TARGET_TOKEN="$target_token" \
    PYTHONPATH="$PWD/$work/python" "$work/venv/bin/python" "$here/check_client.py"; then
    echo "openapi-clients: the Python client check failed; roster's log:" >&2
    tail -n 40 "$run/roster.err" >&2
    exit 1
fi

# The TypeScript types, and a typed usage file checked against them.
ts="$work/typescript"
rm -rf "$ts"
mkdir -p "$ts"
# --default-non-nullable=false: by default openapi-typescript makes every field with a `default`
# required, request bodies included, so `{"scope": {"email_domains": [...]}}` would not type-check
# although `scope.groups` defaults to [].
"$work/node/node_modules/.bin/openapi-typescript" openapi/openapi.json --default-non-nullable=false \
    -o "$ts/roster.d.ts"
cp "$here/usage.ts" "$ts/usage.ts"
"$work/node/node_modules/.bin/tsc" --noEmit --strict --target es2022 --module es2022 \
    --moduleResolution bundler "$ts/usage.ts"
echo "openapi-clients: TypeScript types generated and usage.ts type-checks"
