#!/bin/sh
# The official postgres image's start, in short: an empty data folder gets the role
# POSTGRES_USER (password POSTGRES_PASSWORD, scram-sha-256 over TCP) and the database
# POSTGRES_DB, set up on a private socket (so pg_isready answers only once it is done);
# then the server listens on every address of the container. A command (`postgres
# --version`) runs as it is.
set -eu
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  setup=$(mktemp -d)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$setup/password"
  initdb --username="$POSTGRES_USER" --pwfile="$setup/password" --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$setup" start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -h "$setup" -U "$POSTGRES_USER" -d postgres \
      -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\""
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop
  rm -rf "$setup"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
