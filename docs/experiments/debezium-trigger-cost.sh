#!/usr/bin/env bash
# What the copy trigger of RELAY_DEBEZIUM_TABLE costs an application's insert
# (docs/migrating-from-debezium.md, "What the trigger costs"). pgbench runs
# single-row transactions (one INSERT each, autocommit) into Debezium's
# documented outbox table (id uuid, aggregatetype, aggregateid, type,
# payload jsonb): without the trigger, with it (each insert also writes an
# outbox.messages row), and, for scale, straight into outbox.messages as an
# application written for the relay would. The three alternate, TRIALS
# rounds of SECONDS each, and the script prints each run's rate and the
# medians. Run with synchronous_commit on (the default: the commit's WAL
# flush dominates) and off (what the extra row costs in CPU alone):
#   PGURL=postgres://postgres@127.0.0.1:5432/test docs/experiments/debezium-trigger-cost.sh
#   SYNC=off docs/experiments/debezium-trigger-cost.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/test}
TRIALS=${TRIALS:-3}
SECONDS_EACH=${SECONDS_EACH:-15}
CLIENTS=${CLIENTS:-4}
SYNC=${SYNC:-on}
OUT=$(mktemp -d)
P() { psql "$PGURL" -qAtX -v ON_ERROR_STOP=1 "$@"; }
trap 'P -c "DROP SCHEMA IF EXISTS trigcost_app, trigcost_outbox CASCADE" >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

go build -o "$OUT/relay" ./cmd/relay
P >/dev/null <<SQL
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS trigcost_app, trigcost_outbox CASCADE;
CREATE SCHEMA trigcost_app;
CREATE TABLE trigcost_app.outboxevent (
    id uuid NOT NULL PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL,
    type varchar(255) NOT NULL,
    payload jsonb);
SQL
RELAY_DATABASE_URL=$PGURL RELAY_SCHEMA=trigcost_outbox RELAY_DEBEZIUM_TABLE=trigcost_app.outboxevent \
  "$OUT/relay" migrate up >/dev/null

cat >"$OUT/debezium.sql" <<'SQL'
\set aid random(1, 100000)
INSERT INTO trigcost_app.outboxevent (id, aggregatetype, aggregateid, type, payload)
VALUES (gen_random_uuid(), 'order', :aid, 'OrderCreated', '{"id": 1, "status": "created", "lines": [{"sku": "A-1", "qty": 2}]}');
SQL
cat >"$OUT/native.sql" <<'SQL'
\set aid random(1, 100000)
INSERT INTO trigcost_outbox.messages (topic, key, payload, headers)
VALUES ('outbox.event.order', convert_to(:aid::text, 'UTF8'), convert_to('{"id": 1, "status": "created", "lines": [{"sku": "A-1", "qty": 2}]}', 'UTF8'), '{"id": "x"}');
SQL

run() { # name script
  P -c "TRUNCATE trigcost_app.outboxevent, trigcost_outbox.messages" -c "VACUUM ANALYZE trigcost_app.outboxevent" -c "CHECKPOINT" >/dev/null
  PGOPTIONS="-c synchronous_commit=$SYNC" pgbench "$PGURL" -n -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" -f "$OUT/$2.sql" 2>/dev/null |
    awk -v n="$1" '/^tps/ {printf "%s %.0f\n", n, $3}' | tee -a "$OUT/results"
}
trigger() { P -c "ALTER TABLE trigcost_app.outboxevent $1 TRIGGER outbox_relay_copy_to_trigcost_outbox" >/dev/null; }

echo "synchronous_commit=$SYNC, $CLIENTS clients, ${SECONDS_EACH}s per run; transactions/s:"
for i in $(seq "$TRIALS"); do
  trigger DISABLE; run without_trigger debezium
  trigger ENABLE; run with_trigger debezium
  run native_outbox native
done
for n in without_trigger with_trigger native_outbox; do
  grep "^$n " "$OUT/results" | awk '{print $2}' | sort -n | awk -v n="$n" '{a[NR]=$1} END {printf "median %s %s\n", n, a[int((NR+1)/2)]}'
done
P -c "SELECT count(*) AS copied_rows FROM trigcost_outbox.messages" >/dev/null
