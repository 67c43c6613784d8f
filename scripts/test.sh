#!/usr/bin/env bash
# Runs what CI runs: formatting, clippy, then the whole test suite. The integration tests start
# their own private redis-server processes (never the Redis on 127.0.0.1:6379), so redis-server
# is installed first if it is missing.
#
# Usage: bash scripts/test.sh [ARGS...]   ARGS go to `cargo test --workspace`,
#        e.g. bash scripts/test.sh -p cachekit-tests -- --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Whether the program $1 is where the test harness looks for it: on PATH or in the usual
# package directories.
has_program() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local dir
  for dir in /usr/bin /usr/local/bin /opt/homebrew/bin; do
    [[ -x "$dir/$1" ]] && return 0
  done
  return 1
}

has_redis_server() { has_program redis-server; }

# Runs a command as root: directly when we are root, through sudo when it exists.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "installing redis-server needs root, and sudo is not available: as root, run apt-get install -y redis-server"
  fi
}

# redis-cli creates the cluster of the cluster tests (`redis-cli --cluster create`).
has_redis_cli() { has_program redis-cli; }

install_redis_server() {
  has_redis_server && has_redis_cli && return 0
  case "$(uname -s)" in
    Linux)
      command -v apt-get >/dev/null 2>&1 ||
        die "redis-server is missing and this is not Debian/Ubuntu (no apt-get): install redis-server with your package manager"
      step "installing redis-server (apt-get)"
      as_root apt-get update
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
      ;;
    Darwin)
      command -v brew >/dev/null 2>&1 ||
        die "redis-server is missing and Homebrew is not installed: install Homebrew, then run brew install redis"
      step "installing redis (brew)"
      brew install redis
      ;;
    *)
      die "redis-server is missing and $(uname -s) is not supported by this script: install redis-server yourself"
      ;;
  esac
  has_redis_server || die "redis-server is still not found after installing it"
  has_redis_cli || die "redis-cli is still not found after installing redis-tools"
}

ensure_rust_components() {
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed: see https://rustup.rs"
  if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    return 0
  fi
  command -v rustup >/dev/null 2>&1 ||
    die "cargo fmt or cargo clippy is missing and rustup is not available to add them"
  step "adding rustfmt and clippy (rustup)"
  rustup component add rustfmt clippy
}

install_redis_server
ensure_rust_components

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Workspace builds unify features across packages (the benches' `cached` crate turns on more of
# redis-rs), which could hide a feature the library forgets to ask for: check it on its own too,
# with and without its default features.
step "cargo check -p cachekit-redis (alone; default features, none, each optional one)"
cargo check -p cachekit-redis --all-targets
cargo check -p cachekit-redis --no-default-features
cargo check -p cachekit-redis --no-default-features --features msgpack
cargo check -p cachekit-redis --no-default-features --features compression

# The published crates build on the oldest Rust they declare (`rust-version` in Cargo.toml).
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[[ -n "$msrv" ]] || die "no rust-version in Cargo.toml"
command -v rustup >/dev/null 2>&1 ||
  die "checking the declared rust-version ($msrv) needs rustup: see https://rustup.rs"
step "cargo +$msrv check -p cachekit-redis -p cachekit-redis-macros (the declared rust-version)"
rustup toolchain install "$msrv" --profile minimal >/dev/null
cargo "+$msrv" check --all-features -p cachekit-redis -p cachekit-redis-macros

# The API docs as docs.rs builds them (every feature), with broken links and other warnings as
# errors, so they cannot rot.
step "cargo doc -p cachekit-redis -p cachekit-redis-macros (all features, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features -p cachekit-redis -p cachekit-redis-macros

# What crates.io would receive: both packages built from their packed sources alone (the
# library against the packed macros), with their license files and README.
step "cargo package -p cachekit-redis-macros -p cachekit-redis"
cargo package --allow-dirty -p cachekit-redis-macros -p cachekit-redis

step "cargo test --workspace $*"
cargo test --workspace "$@"
