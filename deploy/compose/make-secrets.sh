#!/usr/bin/env bash
# Writes .env and secrets/jwt_signing_key with random values for
# `docker compose up`, unless they already exist. Neither is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
random() { openssl rand -hex 32; }
if [ ! -f .env ]; then
  printf 'POSTGRES_PASSWORD=%s\nREDIS_PASSWORD=%s\nGRAFANA_ADMIN_PASSWORD=%s\n' "$(random)" "$(random)" "$(random)" > .env
  chmod 600 .env
  echo "wrote .env"
fi
mkdir -p secrets
if [ ! -f secrets/jwt_signing_key ]; then
  random > secrets/jwt_signing_key
  chmod 644 secrets/jwt_signing_key  # read by the image's non-root user
  echo "wrote secrets/jwt_signing_key"
fi
