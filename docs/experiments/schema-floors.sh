#!/usr/bin/env bash
# Database floors of three outbox schemas (docs/performance.md, "Would another
# schema reach the targets?"). Each trial loads 200,000 rows (10,000 keys,
# 256-byte payloads), vacuums and analyses, then drains them in one backend
# with a PL/pgSQL loop of claims of 1,000 rows and marks (or deletes), with
# synchronous_commit off and no client or Kafka at all, and prints the
# seconds it took. The designs alternate, TRIALS times each:
#   a  today's table: claim FOR UPDATE SKIP LOCKED through the partial
#      pending index, mark by a (non-HOT) UPDATE;
#   b  a narrow queue of pending ids beside a table with its primary key only
#      (fillfactor 45, so that the mark is a HOT update), filled by a
#      statement trigger; the claim locks queue rows and reads the messages
#      by id, the mark updates the message and deletes the queue row;
#   c  today's table, claimed without row locks: the most that leases of keys
#      between relays (no FOR UPDATE, no held-rows check) could save.
# It also times single-row INSERT transactions (pgbench, 4 clients) into a
# and b. Usage: PGURL=postgres://postgres@127.0.0.1:5432/test docs/experiments/schema-floors.sh
set -euo pipefail
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/test}
TRIALS=${TRIALS:-3}
PGBENCH=${PGBENCH:-$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -n1)}
P() { psql "$PGURL" -qAtX -v ON_ERROR_STOP=1 "$@"; }
trap 'P -c "DROP SCHEMA IF EXISTS floor_a, floor_b, floor_c CASCADE" >/dev/null 2>&1 || true' EXIT

P >/dev/null <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS floor_a, floor_b, floor_c CASCADE;
CREATE SCHEMA floor_a; CREATE SCHEMA floor_b; CREATE SCHEMA floor_c;
CREATE TABLE floor_a.messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL, key bytea, payload bytea, headers jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_error text, last_error text, sent_at timestamptz, kafka_partition integer, kafka_offset bigint);
CREATE INDEX ON floor_a.messages (id) WHERE status = 'pending';
CREATE INDEX ON floor_a.messages (topic, key, id) WHERE status = 'pending' AND key IS NOT NULL;
CREATE INDEX ON floor_a.messages (sent_at) WHERE status = 'sent';
CREATE TABLE floor_c.messages (LIKE floor_a.messages INCLUDING ALL);

CREATE TABLE floor_b.messages (LIKE floor_a.messages INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = 45);
ALTER TABLE floor_b.messages ADD PRIMARY KEY (id);
CREATE TABLE floor_b.pending (id bigint PRIMARY KEY, topic text NOT NULL, key bytea);
CREATE FUNCTION floor_b.enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO floor_b.pending SELECT id, topic, key FROM new_rows; RETURN NULL; END $$;
CREATE TRIGGER enqueue AFTER INSERT ON floor_b.messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION floor_b.enqueue();

CREATE PROCEDURE floor_a.drain(del boolean) LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; bytes bigint;
BEGIN
  LOOP
    SELECT array_agg(id), sum(length(payload)) INTO ids, bytes FROM (
      SELECT id, topic, key, payload, headers FROM floor_a.messages WHERE status = 'pending'
      ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) s;
    EXIT WHEN ids IS NULL;
    IF del THEN
      DELETE FROM floor_a.messages WHERE id = ANY(ids);
    ELSE
      UPDATE floor_a.messages m SET status = 'sent', sent_at = now(), kafka_partition = 1, kafka_offset = u.id
      FROM unnest(ids) AS u(id) WHERE m.id = u.id;
    END IF;
    COMMIT;
  END LOOP;
END $$;

CREATE PROCEDURE floor_b.drain(del boolean) LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; bytes bigint;
BEGIN
  LOOP
    SELECT array_agg(id) INTO ids FROM (
      SELECT id FROM floor_b.pending ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) s;
    EXIT WHEN ids IS NULL;
    SELECT sum(length(payload)) INTO bytes FROM (
      SELECT m.topic, m.key, m.payload, m.headers FROM floor_b.messages m WHERE m.id = ANY(ids)) s;
    IF del THEN
      DELETE FROM floor_b.messages WHERE id = ANY(ids);
    ELSE
      UPDATE floor_b.messages m SET status = 'sent', sent_at = now(), kafka_partition = 1, kafka_offset = u.id
      FROM unnest(ids) AS u(id) WHERE m.id = u.id;
    END IF;
    DELETE FROM floor_b.pending WHERE id = ANY(ids);
    COMMIT;
  END LOOP;
END $$;
SQL

# Design c drains with design a's procedure, less its row lock: the one
# difference measured.
P -c "$(P -c "SELECT pg_get_functiondef('floor_a.drain'::regproc)" \
  | sed -e 's/floor_a\./floor_c./g' -e 's/ FOR UPDATE SKIP LOCKED//')" >/dev/null

# trial <design a|b|c> <delete on send: true|false>: seconds to drain 200,000 rows.
trial() {
  local s=floor_$1
  P -c "TRUNCATE $s.messages RESTART IDENTITY" >/dev/null
  [ "$1" = b ] && P -c "TRUNCATE floor_b.pending" >/dev/null
  P -c "INSERT INTO $s.messages (topic, key, payload)
        SELECT 'orders', ('k' || (g % 10000))::bytea, repeat('x', 256)::bytea FROM generate_series(1, 200000) g" >/dev/null
  P -c "VACUUM ANALYZE $s.messages" >/dev/null
  [ "$1" = b ] && P -c "VACUUM ANALYZE floor_b.pending" >/dev/null
  P -c "SET synchronous_commit = off" -c "CREATE TEMP TABLE t AS SELECT clock_timestamp() AS t0" \
    -c "CALL $s.drain($2)" -c "SELECT round(extract(epoch FROM clock_timestamp() - t0)::numeric, 3) FROM t"
}

for mode in false true; do
  for design in a b c; do eval "times_${design}=''"; done
  for i in $(seq "$TRIALS"); do
    for design in a b c; do eval "times_${design}=\"\$times_${design} $(trial $design $mode)\""; done
  done
  echo "delete on send: $mode"
  for design in a b c; do eval "echo \"  $design: seconds to drain 200000 rows:\$times_${design}\""; done
done

if [ -n "$PGBENCH" ]; then
  for design in a b; do
    printf '\\set k random(1, 10000)\nINSERT INTO floor_%s.messages (topic, key, payload) VALUES (%s, (%s || :k)::bytea, repeat(%s, 256)::bytea);\n' \
      "$design" "'orders'" "'k'" "'x'" > "/tmp/floor-insert-$design.sql"
  done
  echo "single-row INSERT transactions per second (pgbench, 4 clients, 8 s each):"
  for i in $(seq "$TRIALS"); do
    for design in a b; do
      tps=$("$PGBENCH" "$PGURL" -n -c 4 -j 2 -T 8 -f "/tmp/floor-insert-$design.sql" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
      echo "  $design: $tps"
    done
  done
fi
