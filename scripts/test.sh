#!/usr/bin/env bash
# The test command (README): installs and starts what the tests need, checks formatting and lints, builds the
# examples and benchmarks, then runs every test against real servers.
#   scripts/test.sh            # everything
#   scripts/test.sh --test X   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests (tests/browser.rs) drive Debian's chromium through chromedriver.
export BGMIGRATE_NEED_BROWSER=1

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/ensure-services.sh
elif ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "Postgres is not answering on 127.0.0.1:5432; run 'sudo scripts/ensure-services.sh' first" >&2
    exit 1
fi

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "[test] build examples and benchmarks"
cargo build --examples --locked
cargo bench --no-run --locked
echo "[test] cargo test"
cargo test --locked "$@"
