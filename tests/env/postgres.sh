#!/usr/bin/env bash
# A private PostgreSQL cluster for dynamic database credentials (OpenBao's database
# engine). Data in $ENV_DIR/postgres/data, listening on 127.0.0.1:$PG_PORT only (no
# Unix socket), password (scram-sha-256) auth over TCP. Superuser `vaultsync` with a
# fixed dev password, and a database `app`. Reused when already running.
# Usage: postgres.sh up|down. Writes $ENV_DIR/postgres.env (DATABASE_URL, PG*).
source "$(dirname "$0")/lib.sh"

PG_ADMIN_USER=vaultsync
PG_ADMIN_PASSWORD=vaultsync-admin
PG_DB=app
STATE=$ENV_DIR/postgres
mkdir -p "$STATE"
# The server runs as the `postgres` OS user when we are root, and must reach its data
# directory. If $ENV_DIR is not reachable for it (say, a clone under /root), the data
# lives in /var/tmp instead, one directory per $ENV_DIR, linked from $STATE/data.
PG_HOME=$STATE
if ((EUID == 0)) && ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
  PG_HOME=/var/tmp/vaultsync-postgres-$(cksum <<<"$STATE" | cut -d' ' -f1)
  mkdir -p "$PG_HOME"
  ln -sfn "$PG_HOME/data" "$STATE/data"
  ln -sfn "$PG_HOME/postgres.log" "$STATE/postgres.log"
fi
DATA=$PG_HOME/data
LOGFILE=$PG_HOME/postgres.log

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)}
[[ -n $PG_BIN && -x $PG_BIN/pg_ctl ]] ||
  die postgres "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; run tests/env/tools.sh up"

# PostgreSQL refuses to run as root: as root, run the server as the `postgres` user.
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ctl() { as_pg "$PG_BIN/pg_ctl" -D "$DATA" "$@"; }

is_up() { [[ -f $DATA/PG_VERSION ]] && pg_ctl status >/dev/null 2>&1; }

admin_psql() {
  PGPASSWORD=$PG_ADMIN_PASSWORD "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ADMIN_USER" "$@"
}

init_cluster() {
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die postgres "no 'postgres' OS user; apt-get install postgresql"
    chown postgres: "$PG_HOME"
    as_pg test -w "$PG_HOME" ||
      die postgres "the postgres OS user cannot write $PG_HOME; set VAULTSYNC_ENV_DIR to a path under /tmp"
  fi
  log "initdb $DATA (superuser $PG_ADMIN_USER)"
  local pwfile
  pwfile=$(mktemp)
  echo "$PG_ADMIN_PASSWORD" >"$pwfile"
  ((EUID == 0)) && chown postgres: "$pwfile"
  rm -rf "${DATA:?}"
  as_pg "$PG_BIN/initdb" -D "$DATA" -U "$PG_ADMIN_USER" --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
    >"$STATE/initdb.log" 2>&1 || {
    rm -f "$pwfile"
    cat "$STATE/initdb.log" >&2
    die postgres "initdb failed (log: $STATE/initdb.log); rm -rf $STATE $PG_HOME and rerun"
  }
  rm -f "$pwfile"
  # Only loopback TCP with passwords; nothing else may connect.
  as_pg sh -c "cat >'$DATA/pg_hba.conf'" <<'EOF'
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  echo "include_if_exists = 'vaultsync.conf'" | as_pg sh -c "cat >>'$DATA/postgresql.conf'"
}

write_conf() {
  # Rewritten on every start so a changed PG_PORT takes effect.
  as_pg sh -c "cat >'$DATA/vaultsync.conf'" <<EOF
# Written by tests/env/postgres.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
}

up() {
  if is_up && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "postgresql already running on 127.0.0.1:$PG_PORT (reusing)"
  else
    is_up && { log "postgresql running but not on port $PG_PORT: restarting"; pg_ctl stop -m fast >/dev/null; }
    [[ -f $DATA/PG_VERSION ]] || init_cluster
    write_conf
    log "starting postgresql on 127.0.0.1:$PG_PORT (log: $LOGFILE)"
    touch "$LOGFILE"
    ((EUID == 0)) && chown postgres: "$LOGFILE"
    pg_ctl start -w -t 60 -l "$LOGFILE" >/dev/null 2>&1 || {
      tail -n 20 "$LOGFILE" >&2
      die postgres "pg_ctl start failed (log: $LOGFILE); is port $PG_PORT taken (ss -ltnp | grep $PG_PORT)? else rm -rf $STATE $PG_HOME and rerun"
    }
    wait_for postgres 30 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" ||
      die postgres "postgresql does not accept connections on 127.0.0.1:$PG_PORT (log: $LOGFILE)"
  fi
  if [[ $(admin_psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
    log "creating database $PG_DB"
    admin_psql -d postgres -c "CREATE DATABASE $PG_DB" ||
      die postgres "could not create database $PG_DB (log: $LOGFILE)"
  fi
  cat >"$ENV_DIR/postgres.env.tmp" <<EOF
export DATABASE_URL="postgres://$PG_ADMIN_USER:$PG_ADMIN_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
export PGHOST=127.0.0.1
export PGPORT=$PG_PORT
EOF
  mv "$ENV_DIR/postgres.env.tmp" "$ENV_DIR/postgres.env"
  log "postgresql ready: $PG_ADMIN_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

down() {
  if is_up; then
    log "stopping postgresql"
    pg_ctl stop -m fast -w -t 60 >/dev/null ||
      die postgres "pg_ctl stop failed; see $LOGFILE and 'ps -u postgres'"
  fi
  # The data directory is kept so the next `up` is fast; rm -rf $STATE $PG_HOME to start over.
  rm -f "$ENV_DIR/postgres.env"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) die postgres "usage: $0 up|down" ;;
esac
