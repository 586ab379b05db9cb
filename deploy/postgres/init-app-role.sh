#!/bin/sh
# Run once by the postgres image when it creates its database
# (/docker-entrypoint-initdb.d), as the owner: makes the application role
# of deploy/postgres/app-role.sql with the password from its secret file.
set -eu
psql -v ON_ERROR_STOP=1 -v app_password="$(cat "$POSTGRES_APP_PASSWORD_FILE")" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f /etc/tally/app-role.sql
