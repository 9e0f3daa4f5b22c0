#!/usr/bin/env bash
# Make sure current ClickHouse is available in-process for the tests that 18.16 cannot answer
# (tests/chdb_types.rs): a Python venv with `chdb-core` (ClickHouse 26.x as a library) from PyPI.
#
# Idempotent: when the venv already imports chdb it only prints the version (well under a second). Prints the
# venv's python path on its last line. Location: $BGMIGRATE_CHDB_VENV, default /opt/bgmigrate-chdb (root) or
# ~/.cache/bgmigrate-chdb (anyone else).
set -euo pipefail

say() { printf '[chdb] %s\n' "$*" >&2; }
die() { printf '[chdb] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then default=/opt/bgmigrate-chdb; else default="$HOME/.cache/bgmigrate-chdb"; fi
VENV="${BGMIGRATE_CHDB_VENV:-$default}"
PY="$VENV/bin/python3"

if [ -x "$PY" ] && "$PY" -c 'import chdb' >/dev/null 2>&1; then
    say "chdb-core present in $VENV ($("$PY" -c 'import chdb; print(chdb.chdb_version if hasattr(chdb, "chdb_version") else chdb.__version__)' 2>/dev/null || echo '?'))"
    echo "$PY"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is missing"
if [ ! -x "$PY" ]; then
    say "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
say "pip install chdb-core (ClickHouse in-process, ~100 MB download, once)"
"$PY" -m pip install -q --disable-pip-version-check 'chdb-core>=25' >&2 || die "pip install chdb-core failed"
"$PY" -c 'import chdb; print(chdb.query("SELECT version()", "CSV"))' >&2 || die "chdb does not import"
echo "$PY"
