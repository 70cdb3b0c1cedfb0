// Package verify audits delivery end to end: for every sent outbox row in a
// window it reads the record Kafka holds at the row's recorded partition and
// offset and checks that it is the row's record — its outbox-id header, key
// and value. It finds what the relay's acks=all cannot prevent: records lost
// after the acknowledgement (an unclean leader election, a broker that came
// back without its data, a deleted and recreated topic) and records deleted
// by retention or DeleteRecords before anyone read them.
//
// The rows are read through one server-side cursor in (topic, partition,
// offset) order, a chunk at a time, and only the SHA-256 of each payload
// leaves Postgres; the records are fetched by offset with plain Fetch
// requests, jumping over records that belong to no row. Memory stays bounded
// by the chunk size and one fetch response, whatever the number of rows.
//
// On a compacted topic an offset inside the log without a record is counted
// as compacted, not missing: the cleaner removed it because a later record of
// its key superseded it.
//
// The cursor's transaction stays open while Run works (one snapshot, so
// every row it reads was committed, hence acknowledged, before the end
// offsets it compares against were listed). On a very large window that is
// a long-running read-only transaction; narrow it with Options.Since.
package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/wait"
	"github.com/outboxrelay/relay/relay"
)

// Defaults of Options.
const (
	DefaultChunkSize     = 10000
	DefaultMaxExamples   = 100
	DefaultFetchMaxBytes = 1 << 20
)

// Options narrows and tunes a verification. Zero values mean the default.
type Options struct {
	// Since keeps rows sent at or after it. Zero: every sent row still
	// retained.
	Since time.Time
	// Until keeps rows sent before it. Zero: no upper bound.
	Until time.Time
	// Topics keeps rows of these topics. Empty: every topic.
	Topics []string
	// ChunkSize is how many rows are read from Postgres at once. Default
	// DefaultChunkSize.
	ChunkSize int
	// MaxExamples bounds Report.Examples. Default DefaultMaxExamples.
	MaxExamples int
	// FetchMaxBytes is the most record data one Fetch asks for. Default
	// DefaultFetchMaxBytes; Kafka returns at least one batch even if it is
	// larger.
	FetchMaxBytes int32
}

func (o Options) withDefaults() Options {
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.MaxExamples <= 0 {
		o.MaxExamples = DefaultMaxExamples
	}
	if o.FetchMaxBytes <= 0 {
		o.FetchMaxBytes = DefaultFetchMaxBytes
	}
	return o
}

// Problem classifies a row whose record Kafka does not hold as it should.
type Problem string

const (
	// ProblemMissing: Kafka has no record at the row's offset. Either the
	// offset is at or past the partition's end (the log was truncated
	// below it after the acknowledgement: an unclean leader election, a
	// broker that lost its data), or the topic or partition is gone, or the
	// offset is absent inside the log of a topic that is not compacted.
	ProblemMissing Problem = "missing"
	// ProblemTruncated: the row's offset is below the partition's log start
	// offset: retention or DeleteRecords removed it. Benign when the topic's
	// retention is shorter than the window verified; loss otherwise.
	ProblemTruncated Problem = "truncated"
	// ProblemMismatched: Kafka holds a record at the offset, but not this
	// row's: another outbox-id, or a different key or value.
	ProblemMismatched Problem = "mismatched"
)

// compacted is not a problem: on a compacted topic, an offset inside the
// log without a record was compacted away (a later record of its key
// superseded it). Kafka's own losses do not punch holes into a log: they cut
// its tail (missing) or replace its records (mismatched).
const compacted Problem = "compacted"

// Problems lists every Problem, in report order.
var Problems = []Problem{ProblemMissing, ProblemTruncated, ProblemMismatched}

// Counts are the outcome of checking a set of rows.
type Counts struct {
	Checked    int64 `json:"checked"`
	OK         int64 `json:"ok"`
	Missing    int64 `json:"missing"`
	Truncated  int64 `json:"truncated"`
	Mismatched int64 `json:"mismatched"`
	// Compacted counts rows of compacted topics (cleanup.policy=compact)
	// whose offset inside the log holds no record any more: superseded
	// by a later record of their key. They are not problems.
	Compacted int64 `json:"compacted"`
}

// Of returns the count of one problem.
func (c Counts) Of(p Problem) int64 {
	switch p {
	case ProblemMissing:
		return c.Missing
	case ProblemTruncated:
		return c.Truncated
	case ProblemMismatched:
		return c.Mismatched
	}
	return 0
}

func (c *Counts) add(o Counts) {
	c.Checked += o.Checked
	c.OK += o.OK
	c.Missing += o.Missing
	c.Truncated += o.Truncated
	c.Mismatched += o.Mismatched
	c.Compacted += o.Compacted
}

func (c *Counts) count(p Problem) {
	c.Checked++
	switch p {
	case "":
		c.OK++
	case ProblemMissing:
		c.Missing++
	case ProblemTruncated:
		c.Truncated++
	case ProblemMismatched:
		c.Mismatched++
	case compacted:
		c.Compacted++
	}
}

// PartitionReport is the outcome for one partition.
type PartitionReport struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Counts
	// LogStart and LogEnd are the partition's offsets when it was checked;
	// -1 when the topic or partition does not exist.
	LogStart int64 `json:"log_start_offset"`
	LogEnd   int64 `json:"log_end_offset"`
}

// TopicReport sums up the partitions of one topic.
type TopicReport struct {
	Topic string `json:"topic"`
	Counts
}

// Example is one row with a problem.
type Example struct {
	ID        int64   `json:"id"`
	Topic     string  `json:"topic"`
	Partition int32   `json:"partition"`
	Offset    int64   `json:"offset"`
	Problem   Problem `json:"problem"`
	// Detail says what was found instead; it never quotes a payload.
	Detail string `json:"detail"`
}

// Report is the outcome of Run.
type Report struct {
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Partitions holds every partition that had rows, in topic and
	// partition order.
	Partitions []PartitionReport `json:"partitions"`
	// Total sums up every partition.
	Total Counts `json:"total"`
	// Examples are the first problems found, at most Options.MaxExamples.
	Examples []Example `json:"examples"`
}

// Topics sums the partitions up per topic, in topic order.
func (r Report) Topics() []TopicReport {
	var out []TopicReport
	for _, p := range r.Partitions {
		if len(out) == 0 || out[len(out)-1].Topic != p.Topic {
			out = append(out, TopicReport{Topic: p.Topic})
		}
		out[len(out)-1].add(p.Counts)
	}
	return out
}

// rowsQuery reads the sent rows of the window in the order Kafka stores
// them. Only a hash of the payload leaves the database. $1 since, $2 until
// (NULL: none), $3 topics (NULL: all).
const rowsQuery = `
SELECT id, topic, kafka_partition, kafka_offset, key, sha256(payload), uuid::text
FROM messages
WHERE status = 'sent' AND sent_at >= $1
  AND ($2::timestamptz IS NULL OR sent_at < $2)
  AND ($3::text[] IS NULL OR topic = ANY($3))
ORDER BY topic, kafka_partition, kafka_offset, id`

const (
	declareCursor = `DECLARE verify_rows NO SCROLL CURSOR FOR ` + rowsQuery
	// fetchCursor takes the chunk size as a literal: FETCH accepts no
	// parameters. It is an integer, never text from outside.
	fetchCursor = `FETCH FORWARD %d FROM verify_rows`
)

// sentRow is one row to check.
type sentRow struct {
	id          int64
	topic       string
	partition   int32
	offset      int64
	key         []byte
	payloadHash []byte  // nil: tombstone
	uuid        *string // nil: sent before the uuid column existed
}

// Run checks the sent rows of the window against Kafka and reports what it
// found. The pool's search_path must be the outbox schema (relay.PoolConfig
// sets it). client is used for metadata, ListOffsets and Fetch requests
// only: Run does not change what the client produces or consumes, so the
// relay's own producer will do. An error means the check could not be done;
// problems with rows are in the Report.
func Run(ctx context.Context, pool *pgxpool.Pool, client *kgo.Client, opts Options) (Report, error) {
	opts = opts.withDefaults()
	rep := Report{Since: opts.Since, Until: opts.Until, Partitions: []PartitionReport{}, Examples: []Example{}}
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return rep, fmt.Errorf("verify: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	var until *time.Time
	if !opts.Until.IsZero() {
		until = &opts.Until
	}
	var topics []string
	if len(opts.Topics) > 0 {
		topics = opts.Topics
	}
	if _, err := tx.Exec(ctx, declareCursor, opts.Since, until, topics); err != nil {
		return rep, fmt.Errorf("verify: open cursor: %w", err)
	}

	c := &checker{adm: kadm.NewClient(client), client: client, opts: opts, rep: &rep, topics: map[string]*topicState{}}
	for {
		chunk, err := fetchChunk(ctx, tx, opts.ChunkSize)
		if err != nil {
			return rep, err
		}
		// A chunk holds runs of rows of one partition each; the checker
		// carries a partition over from one chunk to the next.
		for start := 0; start < len(chunk); {
			end := start + 1
			for end < len(chunk) && chunk[end].topic == chunk[start].topic && chunk[end].partition == chunk[start].partition {
				end++
			}
			if err := c.check(ctx, chunk[start:end]); err != nil {
				return rep, err
			}
			start = end
		}
		if len(chunk) < opts.ChunkSize {
			break
		}
	}
	for _, p := range rep.Partitions {
		rep.Total.add(p.Counts)
	}
	return rep, nil
}

func fetchChunk(ctx context.Context, tx pgx.Tx, n int) ([]sentRow, error) {
	rs, err := tx.Query(ctx, fmt.Sprintf(fetchCursor, n))
	if err != nil {
		return nil, fmt.Errorf("verify: read rows: %w", err)
	}
	out, err := pgx.CollectRows(rs, func(rs pgx.CollectableRow) (sentRow, error) {
		var r sentRow
		err := rs.Scan(&r.id, &r.topic, &r.partition, &r.offset, &r.key, &r.payloadHash, &r.uuid)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("verify: read rows: %w", err)
	}
	return out, nil
}

// topicState is what the checker learned about one topic from Kafka.
type topicState struct {
	err     error // the topic does not exist
	id      [16]byte
	leaders map[int32]int32
	starts  kadm.ListedOffsets
	ends    kadm.ListedOffsets
	// compacted is true when the topic's cleanup.policy includes compact.
	compacted bool
}

type checker struct {
	adm    *kadm.Client
	client *kgo.Client
	opts   Options
	rep    *Report
	topics map[string]*topicState
}

// partition returns the report of rows' partition, appending it when it is
// new (rows arrive in topic and partition order).
func (c *checker) partition(topic string, p int32) *PartitionReport {
	if n := len(c.rep.Partitions); n > 0 {
		last := &c.rep.Partitions[n-1]
		if last.Topic == topic && last.Partition == p {
			return last
		}
	}
	c.rep.Partitions = append(c.rep.Partitions, PartitionReport{Topic: topic, Partition: p, LogStart: -1, LogEnd: -1})
	return &c.rep.Partitions[len(c.rep.Partitions)-1]
}

func (c *checker) record(pr *PartitionReport, r sentRow, p Problem, detail string) {
	pr.count(p)
	if p != "" && p != compacted && len(c.rep.Examples) < c.opts.MaxExamples {
		c.rep.Examples = append(c.rep.Examples, Example{ID: r.id, Topic: r.topic, Partition: r.partition, Offset: r.offset, Problem: p, Detail: detail})
	}
}

// describe lists the topic's metadata and offsets the first time it is seen.
// The rows were read in a snapshot taken before this, so every one of them
// was acknowledged before these end offsets were listed.
func (c *checker) describe(ctx context.Context, topic string) (*topicState, error) {
	if ts, ok := c.topics[topic]; ok {
		return ts, nil
	}
	ts := &topicState{}
	if err := c.refresh(ctx, topic, ts); err != nil {
		return nil, err
	}
	c.topics[topic] = ts
	return ts, nil
}

func (c *checker) refresh(ctx context.Context, topic string, ts *topicState) error {
	// A direct request rather than kadm's Metadata, which may answer from
	// the client's cache: after a broker lost a topic, the cache still
	// knows it for a while.
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, c.client)
	if err != nil {
		return fmt.Errorf("verify: metadata of %s: %w", topic, err)
	}
	var td *kmsg.MetadataResponseTopic
	for i := range resp.Topics {
		if t := resp.Topics[i].Topic; t != nil && *t == topic {
			td = &resp.Topics[i]
		}
	}
	switch {
	case td == nil:
		ts.err = kerr.UnknownTopicOrPartition
		return nil
	case td.ErrorCode != 0:
		err := kerr.ErrorForCode(td.ErrorCode)
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			ts.err = err
			return nil
		}
		return fmt.Errorf("verify: metadata of %s: %w", topic, err)
	}
	ts.err = nil
	ts.id = td.TopicID
	ts.leaders = map[int32]int32{}
	for _, pd := range td.Partitions {
		ts.leaders[pd.Partition] = pd.Leader
	}
	if ts.starts, err = c.adm.ListStartOffsets(ctx, topic); err == nil {
		ts.ends, err = c.adm.ListEndOffsets(ctx, topic)
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		ts.err = kerr.UnknownTopicOrPartition // deleted since the metadata
		return nil
	}
	if err != nil {
		return fmt.Errorf("verify: offsets of %s: %w", topic, err)
	}
	ts.compacted = c.isCompacted(ctx, topic)
	return nil
}

// isCompacted reads the topic's cleanup.policy. When it cannot (no
// DescribeConfigs permission), it assumes delete, the default: holes in the
// log then count as missing, the cautious answer.
func (c *checker) isCompacted(ctx context.Context, topic string) bool {
	rcs, err := c.adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return false
	}
	rc, err := rcs.On(topic, nil)
	if err != nil || rc.Err != nil {
		return false
	}
	for _, cfg := range rc.Configs {
		if cfg.Key == "cleanup.policy" {
			return strings.Contains(cfg.MaybeValue(), "compact")
		}
	}
	return false
}

// bounds returns the partition's log start and end offsets; ok is false
// when the partition does not exist.
func (ts *topicState) bounds(topic string, p int32) (start, end int64, ok bool, err error) {
	if ts.err != nil {
		return -1, -1, false, nil
	}
	s, sok := ts.starts.Lookup(topic, p)
	e, eok := ts.ends.Lookup(topic, p)
	if !sok || !eok || errors.Is(s.Err, kerr.UnknownTopicOrPartition) || errors.Is(e.Err, kerr.UnknownTopicOrPartition) {
		return -1, -1, false, nil
	}
	if s.Err != nil {
		return 0, 0, false, fmt.Errorf("verify: start offset of %s/%d: %w", topic, p, s.Err)
	}
	if e.Err != nil {
		return 0, 0, false, fmt.Errorf("verify: end offset of %s/%d: %w", topic, p, e.Err)
	}
	return s.Offset, e.Offset, true, nil
}

// check classifies rows, all of one partition and in offset order.
func (c *checker) check(ctx context.Context, rows []sentRow) error {
	topic, p := rows[0].topic, rows[0].partition
	pr := c.partition(topic, p)
	ts, err := c.describe(ctx, topic)
	if err != nil {
		return err
	}
	start, end, ok, err := ts.bounds(topic, p)
	if err != nil {
		return err
	}
	if !ok {
		for _, r := range rows {
			c.record(pr, r, ProblemMissing, fmt.Sprintf("topic %s has no partition %d", topic, p))
		}
		return nil
	}
	pr.LogStart, pr.LogEnd = start, end
	// Rows outside the log are decided by the offsets alone; the rest
	// need their record.
	var inLog []sentRow
	for _, r := range rows {
		switch {
		case r.offset < start:
			c.record(pr, r, ProblemTruncated, fmt.Sprintf("offset below the log start offset %d", start))
		case r.offset >= end:
			c.record(pr, r, ProblemMissing, fmt.Sprintf("offset at or past the log end offset %d", end))
		default:
			inLog = append(inLog, r)
		}
	}
	return c.fetchAndCompare(ctx, ts, pr, inLog)
}

// maxRetries bounds how often one fetch is retried after a retriable error
// or a log start that moved (retention ran while Run was reading).
const maxRetries = 5

// fetchAndCompare fetches the records at the rows' offsets and compares.
// Each fetch starts at the next row's offset, so records between rows are
// skipped rather than read.
func (c *checker) fetchAndCompare(ctx context.Context, ts *topicState, pr *PartitionReport, rows []sentRow) error {
	topic, p := pr.Topic, pr.Partition
	retries := 0
	for i := 0; i < len(rows); {
		pos := rows[i].offset
		fp, next, err := c.fetch(ctx, ts, topic, p, pos)
		if err != nil {
			if retries++; retries > maxRetries {
				return fmt.Errorf("verify: fetch %s/%d at %d: %w", topic, p, pos, err)
			}
			// The leader moved, or the log start or end moved under
			// us: learn the partition anew and reclassify what is left.
			if err := c.refresh(ctx, topic, ts); err != nil {
				return err
			}
			start, end, ok, err := ts.bounds(topic, p)
			if err != nil {
				return err
			}
			if !ok {
				for _, r := range rows[i:] {
					c.record(pr, r, ProblemMissing, fmt.Sprintf("topic %s has no partition %d", topic, p))
				}
				return nil
			}
			for i < len(rows) && rows[i].offset < start {
				c.record(pr, rows[i], ProblemTruncated, fmt.Sprintf("offset below the log start offset %d", start))
				i++
			}
			rest := rows[i:]
			kept := rest[:0:0]
			for _, r := range rest {
				if r.offset >= end {
					c.record(pr, r, ProblemMissing, fmt.Sprintf("offset at or past the log end offset %d", end))
				} else {
					kept = append(kept, r)
				}
			}
			rows, i = kept, 0
			if err := wait.Sleep(ctx, time.Duration(retries)*50*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		retries = 0
		progressed := false
		// An offset inside the log without a record: compacted away on
		// a compacted topic; on any other, a hole Kafka should not have.
		absent := func(r sentRow, detail string) {
			if ts.compacted {
				c.record(pr, r, compacted, "")
			} else {
				c.record(pr, r, ProblemMissing, detail)
			}
		}
		for _, rec := range fp.Records {
			for i < len(rows) && rows[i].offset < rec.Offset {
				absent(rows[i], fmt.Sprintf("no record at the offset inside the log (next record at %d)", rec.Offset))
				i++
				progressed = true
			}
			for i < len(rows) && rows[i].offset == rec.Offset {
				prob, detail := compare(rows[i], rec)
				c.record(pr, rows[i], prob, detail)
				i++
				progressed = true
			}
		}
		for i < len(rows) && rows[i].offset < next {
			absent(rows[i], "no record at the offset inside the log")
			i++
			progressed = true
		}
		if !progressed {
			// Nothing at or after pos: the log now ends before it (its
			// high watermark went down since the offsets were listed).
			hw := fp.HighWatermark
			for i < len(rows) {
				c.record(pr, rows[i], ProblemMissing, fmt.Sprintf("no record at the offset; the high watermark is now %d", hw))
				i++
			}
		}
	}
	return nil
}

// fetch asks the partition's leader for records from offset on. It returns
// the records and the next offset to ask for.
func (c *checker) fetch(ctx context.Context, ts *topicState, topic string, p int32, offset int64) (kgo.FetchPartition, int64, error) {
	leader, ok := ts.leaders[p]
	if !ok || leader < 0 {
		return kgo.FetchPartition{}, 0, fmt.Errorf("no leader for %s/%d", topic, p)
	}
	req := kmsg.NewPtrFetchRequest()
	req.ReplicaID = -1
	req.MaxWaitMillis = 0
	req.MinBytes = 1
	req.MaxBytes = c.opts.FetchMaxBytes
	req.SessionID = 0
	req.SessionEpoch = -1
	rt := kmsg.NewFetchRequestTopic()
	rt.Topic = topic
	rt.TopicID = ts.id
	rp := kmsg.NewFetchRequestTopicPartition()
	rp.Partition = p
	rp.FetchOffset = offset
	rp.CurrentLeaderEpoch = -1
	rp.LogStartOffset = -1
	rp.PartitionMaxBytes = c.opts.FetchMaxBytes
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)

	resp, err := req.RequestWith(ctx, c.client.Broker(int(leader)))
	if err != nil {
		return kgo.FetchPartition{}, 0, err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return kgo.FetchPartition{}, 0, err
	}
	if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
		return kgo.FetchPartition{}, 0, fmt.Errorf("fetch response for %s/%d has %d topics", topic, p, len(resp.Topics))
	}
	fp, next := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{Topic: topic, Partition: p, Offset: offset},
		&resp.Topics[0].Partitions[0], kgo.DefaultDecompressor(), nil)
	if fp.Err != nil {
		return kgo.FetchPartition{}, 0, fp.Err
	}
	return fp, next, nil
}

// compare checks that rec is r's record: the relay's outbox-id header, its
// outbox-uuid header if the row has a uuid (after a failover that reissued
// ids, another row's record can carry the same outbox-id), the key and the
// value (nil for a tombstone).
func compare(r sentRow, rec *kgo.Record) (Problem, string) {
	id, found := "", false
	uuid, uuidFound := "", false
	for _, h := range rec.Headers {
		switch h.Key {
		case relay.HeaderOutboxID:
			if !found {
				id, found = string(h.Value), true
			}
		case relay.HeaderOutboxUUID:
			if !uuidFound {
				uuid, uuidFound = string(h.Value), true
			}
		}
	}
	want := strconv.FormatInt(r.id, 10)
	switch {
	case !found:
		return ProblemMismatched, "the record at the offset has no outbox-id header"
	case id != want:
		return ProblemMismatched, fmt.Sprintf("the record at the offset has outbox-id %.40q", id)
	case r.uuid != nil && uuid != *r.uuid:
		return ProblemMismatched, fmt.Sprintf("the record at the offset has outbox-uuid %.40q, the row %s", uuid, *r.uuid)
	case !bytes.Equal(rec.Key, r.key):
		return ProblemMismatched, "the record's key differs from the row's"
	case r.payloadHash == nil && rec.Value != nil:
		return ProblemMismatched, "the row is a tombstone but the record has a value"
	case r.payloadHash != nil && rec.Value == nil && !bytes.Equal(r.payloadHash, emptyHash[:]):
		return ProblemMismatched, "the record is a tombstone but the row has a payload"
	case r.payloadHash != nil:
		if h := sha256.Sum256(rec.Value); !bytes.Equal(h[:], r.payloadHash) {
			return ProblemMismatched, "the record's value differs from the row's payload (SHA-256)"
		}
	}
	return "", ""
}

var emptyHash = sha256.Sum256(nil)
