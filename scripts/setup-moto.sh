#!/usr/bin/env bash
# Installs the pinned moto server (EC2 and SQS) into .venv (repo root) for tests/ec2_moto.rs.
# Idempotent and fast when the pinned spec is already there: it only checks a stamp file named
# after the spec, so changing the spec (version or extras) installs again.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_SPEC="moto[server,ec2,sqs]==5.2.5"
VENV=".venv"
STAMP="$VENV/.moto-$(printf '%s' "$MOTO_SPEC" | sha256sum | cut -c1-16)"

if [ -x "$VENV/bin/moto_server" ] && [ -f "$STAMP" ]; then
  exit 0
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing $MOTO_SPEC into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$MOTO_SPEC"
"$VENV/bin/moto_server" --help >/dev/null
rm -f "$VENV"/.moto-*
touch "$STAMP"
echo "== $MOTO_SPEC ready at $VENV/bin/moto_server"
