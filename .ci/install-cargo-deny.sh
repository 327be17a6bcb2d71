#!/usr/bin/env bash
# Makes `cargo deny` (a pinned version) available for .ci/run's licence, ban and source checks.
#
# Idempotent: does nothing when the pinned version is already installed.
#
# cargo-deny's own release profile asks for fat LTO and one codegen unit, which is most of the
# build time on two cores and buys nothing for a CI gate that runs for a few seconds; the
# environment overrides below (cargo lets config beat the manifest's profile) turn both off.
# cargo-deny 0.20 has no cargo features to trim: the advisory database is fetched with the `git`
# binary, not a built-in git implementation, so there is no `--no-default-features` build to
# prefer.
#
# Measured on the project's 2-core machine (2026-11-23, rustc 1.95, with three other builds
# running, load average about 12): 20 min 36 s wall, 6 min 11 s of CPU. On an idle machine
# expect about half the CPU time in wall time. The build with fat LTO was not measured.
#
# Unlike install-promtool.sh this one fails loudly: without cargo-deny the check cannot run.
set -euo pipefail

VERSION="0.20.2" # MSRV 1.88; builds on the pinned stable toolchain

if cargo deny --version 2>/dev/null | grep -qx "cargo-deny $VERSION"; then
    echo "install-cargo-deny: $(cargo deny --version)"
    exit 0
fi

start=$(date +%s)
# A private target directory, deleted by cargo afterwards: the install must not fill the
# project's target/ with release artefacts of an unrelated crate.
env -u CARGO_TARGET_DIR \
    CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install cargo-deny --version "=$VERSION" --locked --quiet
echo "install-cargo-deny: installed $(cargo deny --version) in $(($(date +%s) - start)) s"
