#!/usr/bin/env bash
# Installs the pinned moto EC2 server into .venv (repo root) for tests/ec2_moto.rs.
# Idempotent and fast when the pinned version is already there: it only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
VENV=".venv"
STAMP="$VENV/.moto-$MOTO_VERSION"

if [ -x "$VENV/bin/moto_server" ] && [ -f "$STAMP" ]; then
  exit 0
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing moto[server,ec2]==$MOTO_VERSION into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "moto[server,ec2]==$MOTO_VERSION"
"$VENV/bin/moto_server" --help >/dev/null
touch "$STAMP"
echo "== moto $MOTO_VERSION ready at $VENV/bin/moto_server"
