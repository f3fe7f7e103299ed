#!/usr/bin/env bash
# A throwaway PostgreSQL server from Debian's packages for the instance tests.
#   .ci/postgres.sh start DIR PORT   -> initialises DIR, starts on 127.0.0.1:PORT, prints the URL
#   .ci/postgres.sh stop DIR
#   .ci/postgres.sh sweep PATTERN    -> stops and removes the servers of DIRs matching PATTERN whose
#                                       owner (the PID in DIR/owner) is gone: left by an interrupted run
# Password authentication over TCP (user and database "medtrinity"); as root, the server runs
# as the "postgres" system user (PostgreSQL refuses to run as root).
set -euo pipefail
cmd=$1 dir=$2 port=${3:-55432}
bin=$(dirname "$(readlink -f "$(command -v pg_ctl || ls -1 /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)")")
[ -x "$bin/pg_ctl" ] || { echo "no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 3; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    echo medtrinity-ci | as_owner tee "$dir/pw" >/dev/null
    as_owner "$bin/initdb" -D "$dir/data" -U medtrinity --pwfile="$dir/pw" --auth-host=scram-sha-256 \
      --auth-local=trust -E UTF8 >"$dir/initdb.log" 2>&1
  fi
  if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then  # something else listens there
      holder=$(command -v ss >/dev/null && ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' || true)
      echo "127.0.0.1:$port is taken ${holder:+($holder) }- a server left by an interrupted run?" \
        "Stop it, or pick another port (MEDTRINITY_CI_PG_PORT for .ci/run)." >&2
      exit 4
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null
  fi
  as_owner "$bin/psql" -h "$dir" -p "$port" -U medtrinity -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'medtrinity'" | grep -q 1 \
    || as_owner "$bin/createdb" -h "$dir" -p "$port" -U medtrinity medtrinity
  echo "postgresql://medtrinity:medtrinity-ci@127.0.0.1:$port/medtrinity"
  ;;
stop)
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  ;;
sweep)
  for old in $dir; do  # $dir is a glob here
    [ -f "$old/owner" ] || continue
    owner=$(cat "$old/owner")
    if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
      if as_owner "$bin/pg_ctl" -D "$old/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$old/data" -m fast -w stop >/dev/null || true
      fi
      rm -rf "$old"
      echo "removed $old (its run, PID $owner, is gone)" >&2
    fi
  done
  ;;
*) echo "usage: $0 start DIR [PORT] | stop DIR | sweep PATTERN" >&2; exit 2 ;;
esac
