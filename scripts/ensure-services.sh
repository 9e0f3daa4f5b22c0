#!/usr/bin/env bash
# Make sure the local services that bgmigrate's tests need are installed and
# running: PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and
# ClickHouse on 127.0.0.1:8123 (user "default", empty password). With
# BGMIGRATE_NEED_BROWSER=1 it also installs Debian's chromium + chromedriver.
# schemathesis (PyPI, for tests/hostile.rs) goes into its own virtualenv
# (scripts/ensure-schemathesis.sh).
#
# Idempotent and quick when everything already runs. Meant for a Debian 12
# machine without systemd, run as root (CI runs it non-interactively).
set -euo pipefail

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts services)"

export DEBIAN_FRONTEND=noninteractive
START_MS=$(date +%s%3N)
APT_LOG=/tmp/ensure-services-apt.log
APT_UPDATED=0
POLICY_RC=/usr/sbin/policy-rc.d
CREATED_POLICY_RC=0

cleanup() {
    # Remove the temporary policy-rc.d only if this script created it.
    if [ "$CREATED_POLICY_RC" -eq 1 ]; then rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT

# apt_install PKG... : install packages; runs `apt-get update` once per run,
# only when something actually has to be installed.
apt_install() {
    if [ ! -e "$POLICY_RC" ]; then
        # Without systemd, maintainer scripts would try to start services via
        # invoke-rc.d; we start them ourselves below, so forbid that.
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        CREATED_POLICY_RC=1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        if ! apt-get update -q >>"$APT_LOG" 2>&1; then
            say "warning: apt-get update failed (see $APT_LOG); trying the install anyway"
        fi
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    if ! apt-get install -y -q \
            -o DPkg::Lock::Timeout=300 \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "$@" >>"$APT_LOG" 2>&1; then
        tail -n 40 "$APT_LOG" >&2 || true
        die "apt-get install $* failed (full log: $APT_LOG)"
    fi
}

command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates

# ---------------------------------------------------------------- PostgreSQL
PG_HOST=127.0.0.1
PG_PORT=5432

pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3; }

# Newest installed server version (directory name under /usr/lib/postgresql).
pg_server_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; fi
}

pg_query_version() {
    PGCONNECT_TIMEOUT=5 psql -w -X -q -A -t -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c 'SHOW server_version' 2>/dev/null | awk 'NF{print $1; exit}'
}

# Put trust rules for the socket, 127.0.0.1 and ::1 first in pg_hba.conf
# (first match wins), once.
pg_configure_trust() {
    local ver=$1 hba=/etc/postgresql/$1/main/pg_hba.conf marker='# bgmigrate ensure-services: trust'
    [ -f "$hba" ] || die "missing $hba"
    if ! grep -qF "$marker" "$hba"; then
        say "postgres: configuring trust auth in $hba"
        local tmp
        tmp=$(mktemp)
        {
            echo "$marker (begin)"
            echo "local   all   all                  trust"
            echo "host    all   all   127.0.0.1/32   trust"
            echo "host    all   all   ::1/128        trust"
            echo "$marker (end)"
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"   # keep owner and mode of the original file
        rm -f "$tmp"
    fi
}

BINDIR=$(pg_server_bindir)
if [ -z "$BINDIR" ] || ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    say "postgres: server binaries or client missing, installing"
    apt_install postgresql
    BINDIR=$(pg_server_bindir)
    [ -n "$BINDIR" ] || die "postgres: initdb/pg_ctl still not found under /usr/lib/postgresql/*/bin"
fi
PG_VER_MAJOR=$(basename "$(dirname "$BINDIR")")

if pg_ready; then
    say "postgres: already answering on $PG_HOST:$PG_PORT"
else
    say "postgres: nothing answers on $PG_HOST:$PG_PORT, starting cluster $PG_VER_MAJOR/main"
    if [ ! -d "/etc/postgresql/$PG_VER_MAJOR/main" ]; then
        say "postgres: creating cluster $PG_VER_MAJOR/main"
        pg_createcluster "$PG_VER_MAJOR" main --port "$PG_PORT" >/dev/null
    fi
    port=$(pg_conftool -s "$PG_VER_MAJOR" main show port 2>/dev/null || echo "$PG_PORT")
    if [ "$port" != "$PG_PORT" ]; then
        say "postgres: setting port $PG_PORT (was $port)"
        pg_conftool "$PG_VER_MAJOR" main set port "$PG_PORT"
    fi
    pg_configure_trust "$PG_VER_MAJOR"
    if pg_ctlcluster --skip-systemctl-redirect "$PG_VER_MAJOR" main status >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER_MAJOR" main restart
    else
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER_MAJOR" main start
    fi
    deadline=$((SECONDS + 30))
    until pg_ready || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.5; done
    if ! pg_ready; then
        tail -n 30 "/var/log/postgresql/postgresql-$PG_VER_MAJOR-main.log" >&2 2>/dev/null || true
        die "postgres: not answering on $PG_HOST:$PG_PORT after 30 s"
    fi
fi

PG_VERSION=$(pg_query_version || true)
if [ -z "$PG_VERSION" ]; then
    # Answers, but refuses a password-less login as postgres: fix our own cluster.
    if [ -f "/etc/postgresql/$PG_VER_MAJOR/main/pg_hba.conf" ] \
            && pg_ctlcluster --skip-systemctl-redirect "$PG_VER_MAJOR" main status >/dev/null 2>&1; then
        pg_configure_trust "$PG_VER_MAJOR"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER_MAJOR" main reload
        sleep 1
        PG_VERSION=$(pg_query_version || true)
    fi
    [ -n "$PG_VERSION" ] || die "postgres: cannot log in as postgres@$PG_HOST:$PG_PORT without a password"
fi
say "postgres: ok, server $PG_VERSION; initdb/pg_ctl in $BINDIR"

# ---------------------------------------------------------------- ClickHouse
CH_BIN=/usr/sbin/clickhouse-server
CH_CONFIG=/etc/clickhouse-server/config.xml
CH_URL=http://127.0.0.1:8123
CH_USER=clickhouse
CH_LOGDIR=/var/log/clickhouse-server
CH_RUNDIR=/var/run/clickhouse-server
CH_PIDFILE=$CH_RUNDIR/clickhouse-server.pid

ch_ping() { [ "$(curl -s --max-time 2 "$CH_URL/ping" 2>/dev/null || true)" = "Ok." ]; }

if [ ! -x "$CH_BIN" ] || ! command -v clickhouse-client >/dev/null 2>&1; then
    say "clickhouse: not installed, installing"
    apt_install clickhouse-server clickhouse-client
fi

if ch_ping; then
    say "clickhouse: already answering on $CH_URL"
else
    id "$CH_USER" >/dev/null 2>&1 || die "clickhouse: user $CH_USER missing (package postinst did not run?)"
    install -d -o "$CH_USER" -g "$CH_USER" -m 750 /var/lib/clickhouse
    install -d -o "$CH_USER" -g "$CH_USER" -m 755 "$CH_LOGDIR" "$CH_RUNDIR"
    # start-stop-daemon --test exits 0 if no process runs $CH_BIN (by /proc/PID/exe).
    if start-stop-daemon --start --test --quiet --exec "$CH_BIN" >/dev/null; then
        say "clickhouse: starting server as $CH_USER"
        start-stop-daemon --start --quiet --background \
            --chuid "$CH_USER:$CH_USER" --chdir /var/lib/clickhouse \
            --make-pidfile --pidfile "$CH_PIDFILE" \
            --output "$CH_LOGDIR/stdout.log" \
            --exec "$CH_BIN" -- --config-file="$CH_CONFIG"
    else
        say "clickhouse: a server process exists but does not answer yet, waiting"
    fi
    deadline=$((SECONDS + 60))
    until ch_ping || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.5; done
    if ! ch_ping; then
        say "clickhouse: no answer from $CH_URL/ping after 60 s; last log lines:" >&2
        tail -n 40 "$CH_LOGDIR/clickhouse-server.err.log" >&2 2>/dev/null || true
        tail -n 20 "$CH_LOGDIR/stdout.log" >&2 2>/dev/null || true
        exit 1
    fi
fi

CH_VERSION=$(curl -sS --max-time 5 "$CH_URL/?query=SELECT%20version()" 2>/dev/null | tr -d '\r\n' || true)
[ -n "$CH_VERSION" ] || die "clickhouse: /ping answers but SELECT version() failed"
say "clickhouse: ok, server $CH_VERSION (user default, empty password)"

# ---------------------------------------------------------------- Chromium
if [ "${BGMIGRATE_NEED_BROWSER:-0}" = "1" ]; then
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        say "browser: installing chromium and chromium-driver"
        apt_install chromium chromium-driver
    fi
    say "browser: ok, /usr/bin/chromium and /usr/bin/chromedriver"
fi

# ---------------------------------------------------------------- schemathesis
# The hostile-input suite (tests/hostile.rs) fuzzes the JSON API from its OpenAPI document with schemathesis.
if ! ST_BIN=$(bash "$(dirname "$0")/ensure-schemathesis.sh" | tail -n 1); then
    die "schemathesis: install failed (scripts/ensure-schemathesis.sh)"
fi
say "schemathesis: ok, $ST_BIN"

# ---------------------------------------------------------------- chDB (current ClickHouse in-process, tests/chdb_types.rs)
bash "$(dirname "$0")/ensure-chdb.sh" >/dev/null || die "chdb: scripts/ensure-chdb.sh failed"

elapsed_ms=$(( $(date +%s%3N) - START_MS ))
say "done in $((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000))) s"
say "ready: postgres $PG_VERSION, clickhouse $CH_VERSION"
