#!/usr/bin/env bash
# The one command that runs every check and test on a fresh machine (README: "The two commands").
# It installs what the tests need (moto, into .venv), then: fmt, clippy, every test target.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup-moto.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "== cargo test --all-targets (unit, wire, TLS, EC2-against-moto, simulations; benches once)"
cargo test --all-targets 2>&1 | tee "$log"
echo "== cargo test --doc"
cargo test --doc 2>&1 | tee -a "$log"

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }' "$log"
