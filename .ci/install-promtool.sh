#!/usr/bin/env bash
# Makes `promtool` available for `tests/api/dashboards.rs`, which runs
# `promtool check rules dashboards/alerts.yml` when promtool is on PATH.
#
# Idempotent: does nothing when promtool is already installed. Debian's `prometheus` package
# ships promtool (there is no separate package on bookworm).
#
# Under CI=true (.ci/run exports it) it fails when it cannot install, so a runner without
# promtool goes red here, naming the missing tool. Elsewhere (a developer's machine) it warns and
# exits 0, and the test skips.
set -u

give_up() {
    if [ "${CI:-}" = "true" ]; then
        echo "install-promtool: ERROR: $1" >&2
        exit 1
    fi
    echo "install-promtool: WARNING: $1; alert rules will not be checked" >&2
    exit 0
}

if command -v promtool >/dev/null 2>&1; then
    echo "install-promtool: $(promtool --version 2>&1 | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    give_up "promtool is missing and apt-get is unavailable"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        give_up "promtool is missing and this user cannot run apt-get"
    fi
fi

start=$(date +%s)
# --no-install-recommends: the recommends pull in node exporters and web assets we don't need.
if ! { $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    give_up "apt-get could not install the prometheus package"
fi

# The package's postinst may start a Prometheus server on hosts with an init system; CI only
# needs the binary, so stop it if it is running (ignore failures: containers have no systemd).
$SUDO systemctl stop prometheus >/dev/null 2>&1 || true

if command -v promtool >/dev/null 2>&1; then
    echo "install-promtool: installed $(promtool --version 2>&1 | head -n 1) in $(($(date +%s) - start)) s"
else
    give_up "the prometheus package installed but promtool is not on PATH"
fi
exit 0
