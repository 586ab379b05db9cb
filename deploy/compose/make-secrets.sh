#!/usr/bin/env bash
# Writes .env and the files under secrets/ with random values for
# `docker compose up`, unless they already exist. None is committed.
#   secrets/jwt_signing_key                     API and workers
#   secrets/sealing_private_key                 workers only (X25519, key id `main`)
#   secrets/sealing_public_key                  the API
#   secrets/sealing_api_private_key             the API only
#   secrets/sealing_api_public_key              workers
#   secrets/sealing_receipt_key                 the API only (32 random bytes, base64)
#   secrets/enrollment_key                      the API only (32 random bytes, base64)
#   secrets/nats_ca.crt                         every Tally service (trusts NATS's TLS)
#   secrets/nats_server.crt, nats_server.key    NATS (signed by that CA, for the name `nats`)
#   .env NATS_<IDENTITY>_PASSWORD               NATS and the one service of each identity
# The sealing pairs are what `tally keys generate` prints: 32 raw bytes,
# base64url without padding. Rotation: docs/operations.md, "Sealing keys".
set -euo pipefail
cd "$(dirname "$0")/../.."
random() { openssl rand -hex 32; }
if [ ! -f .env ]; then
  printf 'POSTGRES_PASSWORD=%s\nREDIS_PASSWORD=%s\nGRAFANA_ADMIN_PASSWORD=%s\n' "$(random)" "$(random)" "$(random)" > .env
  chmod 600 .env
  echo "wrote .env"
fi
# One NATS password per identity (deploy/nats/authorization.conf), added
# to an older .env too.
for identity in PROVISION API WORKERS BROADCASTER QUARANTINE; do
  if ! grep -q "^NATS_${identity}_PASSWORD=" .env; then
    printf 'NATS_%s_PASSWORD=%s\n' "$identity" "$(random)" >> .env
    echo "added NATS_${identity}_PASSWORD to .env"
  fi
done
mkdir -p secrets
if [ ! -f secrets/jwt_signing_key ]; then
  random > secrets/jwt_signing_key
  chmod 644 secrets/jwt_signing_key  # read by the image's non-root user
  echo "wrote secrets/jwt_signing_key"
fi
for secret in sealing_receipt_key enrollment_key; do
  if [ ! -f "secrets/$secret" ]; then
    openssl rand -base64 32 > "secrets/$secret"
    chmod 644 "secrets/$secret"  # read by the image's non-root user
    echo "wrote secrets/$secret"
  fi
done

# The last 32 bytes of the DER encodings are the raw X25519 keys.
base64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
x25519_pair() { # name: writes secrets/<name>_private_key and secrets/<name>_public_key
  local private="secrets/$1_private_key" public="secrets/$1_public_key" pem
  [ -f "$private" ] && [ -f "$public" ] && return
  pem=$(openssl genpkey -algorithm X25519)
  printf '%s\n' "$pem" | openssl pkey -outform DER | tail -c 32 | base64url > "$private"
  printf '%s\n' "$pem" | openssl pkey -pubout -outform DER | tail -c 32 | base64url > "$public"
  chmod 644 "$private" "$public"  # read by the image's non-root user
  echo "wrote $private and $public"
}
x25519_pair sealing
x25519_pair sealing_api

# A private CA for NATS's TLS: clients trust only it (nats.tls_root_certificate).
if [ ! -f secrets/nats_server.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN=tally-nats-ca \
    -keyout secrets/nats_ca.key -out secrets/nats_ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=nats \
    -keyout secrets/nats_server.key -out secrets/nats_server.csr 2>/dev/null
  printf 'subjectAltName=DNS:nats,DNS:localhost\nextendedKeyUsage=serverAuth\n' > secrets/nats_server.ext
  openssl x509 -req -in secrets/nats_server.csr -CA secrets/nats_ca.crt -CAkey secrets/nats_ca.key \
    -CAcreateserial -days 825 -extfile secrets/nats_server.ext -out secrets/nats_server.crt 2>/dev/null
  rm -f secrets/nats_server.csr secrets/nats_server.ext secrets/nats_ca.srl secrets/nats_ca.key
  chmod 644 secrets/nats_ca.crt secrets/nats_server.crt secrets/nats_server.key  # read by the containers' users
  echo "wrote secrets/nats_ca.crt, secrets/nats_server.crt and secrets/nats_server.key"
fi
