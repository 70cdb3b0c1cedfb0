#!/usr/bin/env bash
# What running two things at once costs on this machine (docs/performance.md,
# "Why a second batch in flight costs Postgres CPU"). Two identical outboxes
# (today's table and indexes, 200,000 rows over 10,000 keys, 256-byte
# payloads, vacuumed and analysed) are drained by a PL/pgSQL loop of claims of
# 1,000 rows (FOR UPDATE SKIP LOCKED) and marks (UPDATE), with no client or
# Kafka: first one after the other, then both at once, each in its own
# backend. It prints each drain's backend CPU (utime + stime from
# /proc/<pid>/stat) and wall time. The two drains share no rows, no table and
# no index; whatever CPU a drain spends more when the other runs is what
# concurrency itself costs here. A control runs a pure CPU loop (Python, no
# memory traffic to speak of) the same two ways.
# Usage: PGURL=postgres://postgres@127.0.0.1:5432/test docs/experiments/concurrency-cost.sh
set -euo pipefail
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/test}
TRIALS=${TRIALS:-3}
OUT=$(mktemp -d)
P() { psql "$PGURL" -qAtX -v ON_ERROR_STOP=1 "$@"; }
trap 'P -c "DROP SCHEMA IF EXISTS conc_1, conc_2 CASCADE" >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

for s in conc_1 conc_2; do
  P >/dev/null <<SQL
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS $s CASCADE;
CREATE SCHEMA $s;
CREATE TABLE $s.messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL, key bytea, payload bytea, headers jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_error text, last_error text, sent_at timestamptz, kafka_partition integer, kafka_offset bigint);
CREATE INDEX ON $s.messages (id) WHERE status = 'pending';
CREATE INDEX ON $s.messages (topic, key, id) WHERE status = 'pending' AND key IS NOT NULL;
CREATE INDEX ON $s.messages (sent_at) WHERE status = 'sent';
CREATE PROCEDURE $s.drain() LANGUAGE plpgsql AS \$\$
DECLARE ids bigint[];
BEGIN
  LOOP
    SELECT array_agg(id) INTO ids FROM (
      SELECT id, topic, key, payload, headers FROM $s.messages WHERE status = 'pending'
      ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) q;
    EXIT WHEN ids IS NULL;
    UPDATE $s.messages m SET status = 'sent', sent_at = now(), kafka_partition = 1, kafka_offset = u.id
    FROM unnest(ids) AS u(id) WHERE m.id = u.id;
    COMMIT;
  END LOOP;
END \$\$;
SQL
done

load() {
  P -c "TRUNCATE $1.messages RESTART IDENTITY" -c "INSERT INTO $1.messages (topic, key, payload)
        SELECT 'orders', ('k' || (g % 10000))::bytea, repeat('x', 256)::bytea FROM generate_series(1, 200000) g" \
    -c "VACUUM ANALYZE $1.messages" >/dev/null
}

# drain SCHEMA: prints "cpu_seconds wall_seconds" of one backend draining it.
drain() {
  P <<SQL
SET synchronous_commit = off;
SELECT pg_backend_pid() AS pid, clock_timestamp() AS t0 \gset
\setenv BPID :pid
\! awk '{print \$14 + \$15}' /proc/\$BPID/stat > $OUT/$1.before
CALL $1.drain();
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz)::numeric, 2) AS wall \gset
\! awk '{print \$14 + \$15}' /proc/\$BPID/stat > $OUT/$1.after
\setenv WALL :wall
\! echo "\$(( \$(cat $OUT/$1.after) - \$(cat $OUT/$1.before) )) \$WALL" | awk '{printf "%.2f %s\n", \$1 / 100, \$2}'
SQL
}

spin() { python3 -c 'import resource
x = 0
for i in range(30_000_000): x += i * i
r = resource.getrusage(resource.RUSAGE_SELF); print("%.2f" % (r.ru_utime + r.ru_stime))'; }

for i in $(seq "$TRIALS"); do
  load conc_1; load conc_2
  echo "trial $i, one after the other (cpu s, wall s): conc_1 $(drain conc_1), conc_2 $(drain conc_2)"
  load conc_1; load conc_2
  drain conc_1 > "$OUT/t1" & drain conc_2 > "$OUT/t2" & wait
  echo "trial $i, both at once (cpu s, wall s): conc_1 $(cat "$OUT/t1"), conc_2 $(cat "$OUT/t2")"
  echo "trial $i, CPU loop, cpu s: alone $(spin) $(spin); two at once $(spin > "$OUT/s1" & spin > "$OUT/s2" & wait; cat "$OUT/s1" "$OUT/s2" | paste -sd' ')"
done
