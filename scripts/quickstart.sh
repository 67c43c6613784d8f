#!/usr/bin/env bash
# Runs the quickstart example. The environment passes through (e.g. the Redis URL, RUST_LOG);
# arguments go to the example.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run -p cachekit-examples --bin quickstart -- "$@"
