#!/usr/bin/env bash
# Runs every test of callgate. Installs redis-server first if it is missing (the Redis tests
# start their own redis-server on free ports and never skip).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it (apt-get install -y redis-server)" >&2
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi

cargo test --workspace --locked
