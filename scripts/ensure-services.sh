#!/usr/bin/env bash
# Makes sure Postgres, Redis and NATS (with JetStream) answer on loopback,
# and that a Rust toolchain is present. Uses whatever already runs on the
# default ports; otherwise installs Debian/Ubuntu packages and starts them.
set -euo pipefail

STATE_DIR="${TALLY_STATE_DIR:-$PWD/.tally}"
mkdir -p "$STATE_DIR"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '==> %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "error: $2 did not start listening on 127.0.0.1:$1 (see $STATE_DIR/*.log)" >&2
  exit 1
}
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
  if command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ]; then return; fi
  command -v curl >/dev/null || apt_install curl ca-certificates
  command -v cc >/dev/null || apt_install build-essential
  say "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
}

ensure_postgres() {
  if port_open 5432; then say "postgres: already running"; return; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version hba
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # A development box: the postgres role may connect over loopback without
  # a password, as the default database.url expects.
  if ! $SUDO grep -q 'tally-dev' "$hba"; then
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust # tally-dev' "$hba"
  fi
  say "postgres: starting cluster $version/main"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 postgres
}

ensure_redis() {
  if port_open 6379; then say "redis: already running"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log"
  wait_port 6379 redis
}

ensure_nats() {
  if port_open 4222; then say "nats: already running"; return; fi
  command -v nats-server >/dev/null || apt_install nats-server
  say "nats: starting with JetStream"
  mkdir -p "$STATE_DIR/nats"
  setsid nats-server -a 127.0.0.1 -p 4222 -js -sd "$STATE_DIR/nats" -l "$STATE_DIR/nats.log" \
    </dev/null >/dev/null 2>&1 &
  wait_port 4222 nats
}

ensure_rust
ensure_postgres
ensure_redis
ensure_nats
