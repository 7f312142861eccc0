#!/usr/bin/env bash
# The one command that runs every check and test on a fresh machine (README: "Run all tests").
# It installs what the tests need (moto, into .venv), then: fmt, clippy, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ -x scripts/setup-moto.sh ]; then
  scripts/setup-moto.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets
# Doc tests are not part of --all-targets.
cargo test --doc
