#!/usr/bin/env bash
# Install schemathesis (PyPI) into a virtualenv of its own, for the hostile-input suite (tests/hostile.rs), which
# runs it against the web process's /api/openapi.json. Idempotent and quick when the pinned version is present.
#   scripts/ensure-schemathesis.sh      # prints the path of the schemathesis executable on its last line
# BGMIGRATE_VENV overrides where the virtualenv lives (default /opt/bgmigrate-venv).
set -euo pipefail

VERSION=4.32.5
VENV=${BGMIGRATE_VENV:-/opt/bgmigrate-venv}
BIN=$VENV/bin/schemathesis

say() { printf '[schemathesis] %s\n' "$*" >&2; }

# The dist-info folder pip writes names the installed version: checking it costs nothing (pip show takes seconds).
installed() {
    [ -x "$BIN" ] && compgen -G "$VENV/lib/python3*/site-packages/schemathesis-$VERSION.dist-info" >/dev/null
}

if installed; then
    say "ok, schemathesis $VERSION in $VENV"
else
    # Debian's python3 first (a stable path across pyenv changes); any python3 with venv otherwise.
    PYTHON=$(command -v /usr/bin/python3 || command -v python3 || true)
    [ -n "$PYTHON" ] || { say "ERROR: no python3 found"; exit 1; }
    if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        say "python3 -m venv failed with $PYTHON; trying the python3-venv package"
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            apt-get install -y -q python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            say "ERROR: cannot create $VENV (install python3-venv, or run as root)"; exit 1
        fi
    fi
    say "installing schemathesis $VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$VERSION" >&2
    installed || { say "ERROR: schemathesis $VERSION did not install"; exit 1; }
    say "ok, schemathesis $VERSION in $VENV"
fi
echo "$BIN"
