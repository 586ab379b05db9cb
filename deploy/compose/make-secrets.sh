#!/usr/bin/env bash
# Writes the files under secrets/ with random values for `docker compose
# up`, unless they already exist. None is committed. Every password is a
# file handed to its services as a Compose secret, never an environment
# variable; a password an older .env held is kept, so existing volumes
# keep working.
#   secrets/jwt_signing_key                     API and workers
#   secrets/sealing_private_key                 workers only (X25519, key id `main`)
#   secrets/sealing_public_key                  the API
#   secrets/sealing_api_private_key             the API only
#   secrets/sealing_api_public_key              workers
#   secrets/sealing_receipt_key                 the API only (32 random bytes, base64)
#   secrets/enrollment_key                      the API only (32 random bytes, base64)
#   secrets/record_signing_key                  workers and the API (Ed25519, signed-note format)
#   secrets/record_verifier_key                 to publish: what anyone checks records with
#   secrets/nats_ca.crt                         every Tally service (trusts NATS's TLS)
#   secrets/nats_server.crt, nats_server.key    NATS (signed by that CA, for the name `nats`)
#   secrets/nats_<identity>_password            one per NATS identity; NATS reads them all
#                                               from secrets/nats_passwords, each role its URL
#   secrets/postgres_ca.crt                     every Tally service (verifies Postgres's TLS)
#   secrets/postgres_server.crt, .key           Postgres (for the name `postgres`)
#   secrets/postgres_password                   Postgres (owner `tally`), migrate, the exporter
#   secrets/postgres_app_password               Postgres and the serving roles (tally_app)
#   secrets/redis_password                      Redis, the roles, the exporter
#   secrets/grafana_admin_password              Grafana
#   secrets/database_url, database_owner_url, redis_url, nats_url_<identity>
#                                               the URLs Tally reads (TALLY_*_FILE), made
#                                               from the passwords above on every run
# The sealing pairs are what `tally keys generate` prints: 32 raw bytes,
# base64url without padding. Rotation: docs/operations.md, "Sealing keys".
set -euo pipefail
cd "$(dirname "$0")/../.."
random() { openssl rand -hex 32; }
mkdir -p secrets
# Files the containers' users read (several run as non-root users).
write() { # file, value
  printf '%s' "$2" > "$1"
  chmod 644 "$1"
}
from_env() { [ -f .env ] && sed -n "s/^$1=//p" .env | head -n 1; }
password() { # name, the variable an older .env held it in
  local file="secrets/$1" value
  [ -f "$file" ] && return
  value=$(from_env "$2" || true)
  write "$file" "${value:-$(random)}"
  echo "wrote $file"
}
password postgres_password POSTGRES_PASSWORD
password postgres_app_password POSTGRES_APP_PASSWORD
password redis_password REDIS_PASSWORD
password grafana_admin_password GRAFANA_ADMIN_PASSWORD
identities="provision api workers broadcaster quarantine"
for identity in $identities; do
  password "nats_${identity}_password" "NATS_${identity^^}_PASSWORD"
done
# Derived, so rewritten every run: NATS's environment file and Tally's URLs.
secret() { cat "secrets/$1"; }
: > secrets/nats_passwords
for identity in $identities; do
  printf 'NATS_%s_PASSWORD=%s\n' "${identity^^}" "$(secret "nats_${identity}_password")" >> secrets/nats_passwords
done
chmod 644 secrets/nats_passwords
tls_pg="sslmode=verify-full&sslrootcert=/run/secrets/postgres_ca"
write secrets/database_url "postgres://tally_app:$(secret postgres_app_password)@postgres:5432/tally?${tls_pg}"
write secrets/database_owner_url "postgres://tally:$(secret postgres_password)@postgres:5432/tally?${tls_pg}"
write secrets/redis_url "redis://:$(secret redis_password)@redis:6379"
for identity in provision api workers broadcaster; do
  write "secrets/nats_url_${identity}" "tls://${identity}:$(secret "nats_${identity}_password")@nats:4222"
done
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

# The record key, in the signed-note format `tally keys generate --record`
# prints (docs/record.md): PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>,
# the key id being the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
# The last 32 bytes of the DER encodings are the raw seed and public key.
record_key() { # name
  local name=$1 dir id
  [ -f secrets/record_signing_key ] && return
  dir=$(mktemp -d)
  openssl genpkey -algorithm ED25519 -out "$dir/key.pem"
  openssl pkey -in "$dir/key.pem" -outform DER | tail -c 32 > "$dir/seed"
  openssl pkey -in "$dir/key.pem" -pubout -outform DER | tail -c 32 > "$dir/public"
  id=$({ printf '%s\n\001' "$name"; cat "$dir/public"; } | openssl dgst -sha256 -binary | head -c 4 | od -An -tx1 | tr -d ' \n')
  printf 'PRIVATE+KEY+%s+%s+%s\n' "$name" "$id" "$({ printf '\001'; cat "$dir/seed"; } | openssl base64 -A)" \
    > secrets/record_signing_key
  printf '%s+%s+%s\n' "$name" "$id" "$({ printf '\001'; cat "$dir/public"; } | openssl base64 -A)" \
    > secrets/record_verifier_key
  rm -rf "$dir"
  chmod 644 secrets/record_signing_key secrets/record_verifier_key  # read by the image's non-root user
  echo "wrote secrets/record_signing_key and secrets/record_verifier_key (publish the latter)"
}
record_key "${TALLY_RECORD_KEY_NAME:-localhost/tally}"

# A private CA per server, for its name on the compose network: clients
# trust only it (nats.tls_root_certificate; sslrootcert in the Postgres URL).
server_tls() { # name: writes secrets/<name>_ca.crt, <name>_server.crt and <name>_server.key
  local name=$1
  [ -f "secrets/${name}_server.crt" ] && return
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=tally-${name}-ca" \
    -keyout "secrets/${name}_ca.key" -out "secrets/${name}_ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=${name}" \
    -keyout "secrets/${name}_server.key" -out "secrets/${name}_server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' "$name" > "secrets/${name}_server.ext"
  openssl x509 -req -in "secrets/${name}_server.csr" -CA "secrets/${name}_ca.crt" -CAkey "secrets/${name}_ca.key" \
    -CAcreateserial -days 825 -extfile "secrets/${name}_server.ext" -out "secrets/${name}_server.crt" 2>/dev/null
  rm -f "secrets/${name}_server.csr" "secrets/${name}_server.ext" "secrets/${name}_ca.srl" "secrets/${name}_ca.key"
  # Read by the containers' users (Postgres copies its key to a private file first).
  chmod 644 "secrets/${name}_ca.crt" "secrets/${name}_server.crt" "secrets/${name}_server.key"
  echo "wrote secrets/${name}_ca.crt, secrets/${name}_server.crt and secrets/${name}_server.key"
}
server_tls nats
server_tls postgres
