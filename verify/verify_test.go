package verify_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func messages(topic string, n int) []relaytest.Message {
	out := make([]relaytest.Message, n)
	for i := range out {
		out[i] = relaytest.Message{Topic: topic, Key: []byte("k" + strconv.Itoa(i%5)), Payload: []byte(fmt.Sprintf("payload %d", i))}
	}
	return out
}

func run(t *testing.T, db *relaytest.DB, brokers []string, opts verify.Options) verify.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := verify.Run(ctx, db.Pool, relaytest.NewClient(t, brokers), opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return rep
}

// position is where the relay recorded a row.
type position struct {
	partition int32
	offset    int64
}

func positions(t *testing.T, db *relaytest.DB) map[int64]position {
	t.Helper()
	rs, err := db.Pool.Query(context.Background(), `SELECT id, kafka_partition, kafka_offset FROM messages WHERE status = 'sent'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[int64]position{}
	for rs.Next() {
		var id int64
		var p position
		if err := rs.Scan(&id, &p.partition, &p.offset); err != nil {
			t.Fatal(err)
		}
		out[id] = p
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// problemIDs returns the ids of the examples with problem p, sorted.
func problemIDs(rep verify.Report, p verify.Problem) []int64 {
	var out []int64
	for _, e := range rep.Examples {
		if e.Problem == p {
			out = append(out, e.ID)
		}
	}
	slices.Sort(out)
	return out
}

func wantCounts(t *testing.T, what string, got, want verify.Counts) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: counts %+v, want %+v", what, got, want)
	}
}

func TestDeliveredRowsVerify(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "orders", "users")
	brokers := cluster.ListenAddrs()
	msgs := append(messages("orders", 30), messages("users", 10)...)
	msgs = append(msgs,
		relaytest.Message{Topic: "orders", Key: []byte("k1")},                   // tombstone
		relaytest.Message{Topic: "users", Payload: []byte("no key")},            // no key
		relaytest.Message{Topic: "users", Key: []byte("k2"), Payload: []byte{}}, // empty payload
		relaytest.Message{Topic: "users", Key: []byte("k3"), Payload: []byte("h"), Headers: map[string]string{"a": "b"}},
	)
	relaytest.Deliver(t, db, brokers, msgs...)

	rep := run(t, db, brokers, verify.Options{})
	n := int64(len(msgs))
	wantCounts(t, "total", rep.Total, verify.Counts{Checked: n, OK: n})
	if len(rep.Examples) != 0 {
		t.Fatalf("examples %+v, want none", rep.Examples)
	}
	topics := rep.Topics()
	if len(topics) != 2 || topics[0].Topic != "orders" || topics[0].Checked != 31 || topics[1].Topic != "users" || topics[1].Checked != 13 {
		t.Fatalf("topics %+v, want orders 31 and users 13", topics)
	}
	for i, p := range rep.Partitions {
		if p.LogEnd <= 0 || p.LogStart != 0 {
			t.Fatalf("partition %+v: want the log's offsets", p)
		}
		if i > 0 && (rep.Partitions[i-1].Topic > p.Topic || rep.Partitions[i-1].Topic == p.Topic && rep.Partitions[i-1].Partition >= p.Partition) {
			t.Fatalf("partitions out of order: %+v", rep.Partitions)
		}
	}

	// The window and the topic filter narrow what is checked.
	if _, err := db.Pool.Exec(context.Background(), `UPDATE messages SET sent_at = sent_at - interval '2 hours' WHERE topic = 'users'`); err != nil {
		t.Fatal(err)
	}
	rep = run(t, db, brokers, verify.Options{Since: time.Now().Add(-time.Hour)})
	wantCounts(t, "since 1h", rep.Total, verify.Counts{Checked: 31, OK: 31})
	rep = run(t, db, brokers, verify.Options{Topics: []string{"users"}})
	wantCounts(t, "topic users", rep.Total, verify.Counts{Checked: 13, OK: 13})
	rep = run(t, db, brokers, verify.Options{Until: time.Now().Add(-time.Hour)})
	wantCounts(t, "until 1h ago", rep.Total, verify.Counts{Checked: 13, OK: 13})
}

func TestTruncatedRows(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 2, "orders")
	brokers := cluster.ListenAddrs()
	relaytest.Deliver(t, db, brokers, messages("orders", 40)...)
	pos := positions(t, db)

	// Retention (here DeleteRecords) removes partition 0 below offset 5.
	relaytest.DeleteRecords(t, brokers, "orders", 0, 5)
	var want []int64
	for id, p := range pos {
		if p.partition == 0 && p.offset < 5 {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	if len(want) != 5 {
		t.Fatalf("partition 0 has %d rows below offset 5; the test needs 5", len(want))
	}

	rep := run(t, db, brokers, verify.Options{})
	wantCounts(t, "total", rep.Total, verify.Counts{Checked: 40, OK: 35, Truncated: 5})
	if got := problemIDs(rep, verify.ProblemTruncated); !slices.Equal(got, want) {
		t.Fatalf("truncated ids %v, want %v", got, want)
	}
	if rep.Partitions[0].LogStart != 5 || rep.Partitions[0].Truncated != 5 || rep.Partitions[1].Truncated != 0 {
		t.Fatalf("partitions %+v: want 5 truncated rows in partition 0, log start 5", rep.Partitions)
	}
}

// TestMissingAfterBrokerLostData restarts the broker on the same port
// without its data, as a broker whose disk was lost (or an unclean leader
// election to an empty replica) would come back: offsets the relay recorded
// now point past the end of the log, or at records that are not the rows'.
func TestMissingAfterBrokerLostData(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	first, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "gone"))
	if err != nil {
		t.Fatal(err)
	}
	brokers := first.ListenAddrs()
	relaytest.Deliver(t, db, brokers, append(messages("orders", 12), messages("gone", 3)...)...)
	pos := positions(t, db)
	// The verifying client outlives the broker, as the daemon's would.
	cl := relaytest.NewClient(t, brokers)
	ctx := context.Background()
	if rep, err := verify.Run(ctx, db.Pool, cl, verify.Options{}); err != nil || rep.Total.OK != 15 {
		t.Fatalf("before the restart: %+v, %v; want 15 ok", rep.Total, err)
	}

	_, port, _ := net.SplitHostPort(brokers[0])
	portN, _ := strconv.Atoi(port)
	first.Close()
	second, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(portN), kfake.SeedTopics(1, "orders"))
	if err != nil {
		t.Fatalf("restart on port %d: %v", portN, err)
	}
	defer second.Close()
	// The new log holds three records of someone else's at offsets 0-2.
	for i := range 3 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("other " + strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	rep, err := verify.Run(ctx, db.Pool, cl, verify.Options{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	wantCounts(t, "total", rep.Total, verify.Counts{Checked: 15, Missing: 12, Mismatched: 3})
	var wantMissing, wantMismatched []int64
	for id, p := range pos {
		if id > 12 || p.offset >= 3 { // topic gone was not recreated
			wantMissing = append(wantMissing, id)
		} else {
			wantMismatched = append(wantMismatched, id)
		}
	}
	slices.Sort(wantMissing)
	slices.Sort(wantMismatched)
	if got := problemIDs(rep, verify.ProblemMissing); !slices.Equal(got, wantMissing) {
		t.Fatalf("missing ids %v, want %v", got, wantMissing)
	}
	if got := problemIDs(rep, verify.ProblemMismatched); !slices.Equal(got, wantMismatched) {
		t.Fatalf("mismatched ids %v, want %v", got, wantMismatched)
	}
	for _, p := range rep.Partitions {
		if p.Topic == "gone" && (p.LogEnd != -1 || p.Missing != 3) {
			t.Fatalf("partition of the deleted topic: %+v; want 3 missing, no log", p)
		}
	}
}

func TestMismatchedRows(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	brokers := cluster.ListenAddrs()
	ids := relaytest.Deliver(t, db, brokers, messages("orders", 10)...)
	ctx := context.Background()
	// Row 3 now claims row 7's offset; row 5's payload and row 6's key
	// differ from what was produced; row 9 has another uuid than its
	// record's outbox-uuid (as a new event that reused a lost row's id
	// after a failover would).
	for _, q := range []string{
		fmt.Sprintf(`UPDATE messages SET kafka_offset = (SELECT kafka_offset FROM messages WHERE id = %d) WHERE id = %d`, ids[7], ids[3]),
		fmt.Sprintf(`UPDATE messages SET payload = 'changed' WHERE id = %d`, ids[5]),
		fmt.Sprintf(`UPDATE messages SET key = 'other' WHERE id = %d`, ids[6]),
		fmt.Sprintf(`UPDATE messages SET payload = NULL WHERE id = %d`, ids[8]),
		fmt.Sprintf(`UPDATE messages SET uuid = gen_random_uuid() WHERE id = %d`, ids[9]),
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	rep := run(t, db, brokers, verify.Options{})
	wantCounts(t, "total", rep.Total, verify.Counts{Checked: 10, OK: 5, Mismatched: 5})
	if got, want := problemIDs(rep, verify.ProblemMismatched), []int64{ids[3], ids[5], ids[6], ids[8], ids[9]}; !slices.Equal(got, want) {
		t.Fatalf("mismatched ids %v, want %v; examples %+v", got, want, rep.Examples)
	}
}

// TestChunks reads many rows a few at a time: partitions span chunks, and
// the report is the same as with one chunk.
func TestChunks(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "a", "b")
	brokers := cluster.ListenAddrs()
	relaytest.Deliver(t, db, brokers, append(messages("a", 300), messages("b", 100)...)...)
	relaytest.DeleteRecords(t, brokers, "a", 1, 20)
	// Rows whose offsets were never produced: past the end of the log.
	if _, err := db.Pool.Exec(context.Background(), `UPDATE messages SET kafka_offset = kafka_offset + 1000 WHERE topic = 'b' AND kafka_partition = 2`); err != nil {
		t.Fatal(err)
	}

	whole := run(t, db, brokers, verify.Options{MaxExamples: 1000})
	chunked := run(t, db, brokers, verify.Options{ChunkSize: 7, MaxExamples: 1000, FetchMaxBytes: 64})
	if whole.Total.Checked != 400 || whole.Total.Truncated != 20 || whole.Total.Missing == 0 || whole.Total.OK+whole.Total.Truncated+whole.Total.Missing != 400 {
		t.Fatalf("one chunk: %+v", whole.Total)
	}
	if !slices.Equal(whole.Partitions, chunked.Partitions) || !slices.Equal(whole.Examples, chunked.Examples) {
		t.Fatalf("chunks of 7 report\n%+v\nwant\n%+v", chunked.Partitions, whole.Partitions)
	}
	if len(chunked.Partitions) != 6 {
		t.Fatalf("%d partitions, want 6", len(chunked.Partitions))
	}
	few := run(t, db, brokers, verify.Options{ChunkSize: 7, MaxExamples: 3})
	if len(few.Examples) != 3 || few.Total != whole.Total {
		t.Fatalf("MaxExamples 3: %d examples, total %+v", len(few.Examples), few.Total)
	}
}

// TestCompactedTopic: on a compacted topic, offsets the cleaner emptied are
// counted as compacted, not missing; the latest row of each key is ok.
func TestCompactedTopic(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "plain")
	brokers := cluster.ListenAddrs()
	adm := kadm.NewClient(relaytest.NewClient(t, brokers))
	policy := "compact"
	if _, err := adm.CreateTopic(context.Background(), 1, 1, map[string]*string{"cleanup.policy": &policy}, "state"); err != nil {
		t.Fatal(err)
	}
	// The first record's key is never written again, so the log keeps
	// its start; several deliveries make several segments to clean.
	relaytest.Deliver(t, db, brokers, relaytest.Message{Topic: "state", Key: []byte("stays"), Payload: []byte("x")})
	for range 4 {
		relaytest.Deliver(t, db, brokers, messages("state", 5)...)
	}
	cluster.Compact()
	starts, err := adm.ListStartOffsets(context.Background(), "state")
	if err != nil {
		t.Fatal(err)
	}
	held := countRecords(t, brokers, "state", 21)
	if s, _ := starts.Lookup("state", 0); s.Offset != 0 || held >= 21 {
		t.Fatalf("after compaction: log start %d, %d of 21 records; the test needs holes inside the log", s.Offset, held)
	}

	rep := run(t, db, brokers, verify.Options{Topics: []string{"state"}})
	wantCounts(t, "state", rep.Total, verify.Counts{Checked: 21, OK: held, Compacted: 21 - held})
	if len(rep.Examples) != 0 {
		t.Fatalf("examples %+v; compacted rows are not problems", rep.Examples)
	}
	// The latest row of each key is among the ok ones: it was not
	// superseded, so Kafka must still hold it.
	var latestOK int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(DISTINCT key) FROM messages WHERE topic = 'state'`).Scan(&latestOK); err != nil {
		t.Fatal(err)
	}
	if held < int64(latestOK) {
		t.Fatalf("%d records held, fewer than the %d keys", held, latestOK)
	}

	// The same holes in a topic that is not compacted are missing rows:
	// move the rows to a plain topic whose log has as many records.
	for range 21 {
		if err := relaytest.NewClient(t, brokers).ProduceSync(context.Background(), &kgo.Record{Topic: "plain", Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Pool.Exec(context.Background(), `UPDATE messages SET topic = 'plain'`); err != nil {
		t.Fatal(err)
	}
	rep = run(t, db, brokers, verify.Options{})
	if rep.Total.Compacted != 0 || rep.Total.Missing != 0 || rep.Total.Mismatched != 21 {
		t.Fatalf("rows on a plain topic: %+v, want all 21 mismatched (other records at their offsets)", rep.Total)
	}
}

// countRecords reads partition 0 of topic from the start up to offset
// end-1, which must exist, and counts the records it holds.
func countRecords(t *testing.T, brokers []string, topic string, end int64) int64 {
	t.Helper()
	cl := relaytest.NewClient(t, brokers,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d records of %s without reaching offset %d", n, topic, end-1)
		}
		for _, r := range fs.Records() {
			n++
			if r.Offset == end-1 {
				return n
			}
		}
	}
}

// TestLogStartMovesDuringRun: retention deletes records after verify listed
// the log start offset. The fetch at a deleted offset fails with
// OFFSET_OUT_OF_RANGE; verify lists the offsets again and reports those rows
// truncated.
func TestLogStartMovesDuringRun(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	brokers := cluster.ListenAddrs()
	relaytest.Deliver(t, db, brokers, messages("orders", 10)...)
	relaytest.DeleteRecords(t, brokers, "orders", 0, 4)
	// The first listing of start offsets answers as before the deletion.
	var stale atomic.Int32
	cluster.ControlKey(int16(kmsg.ListOffsets), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.ListOffsetsRequest)
		if len(req.Topics) != 1 || len(req.Topics[0].Partitions) != 1 || req.Topics[0].Partitions[0].Timestamp != -2 {
			cluster.KeepControl()
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.ListOffsetsResponse)
		rt := kmsg.NewListOffsetsResponseTopic()
		rt.Topic = req.Topics[0].Topic
		rp := kmsg.NewListOffsetsResponseTopicPartition()
		rp.Partition = 0
		rp.Offset = 0
		rp.LeaderEpoch = req.Topics[0].Partitions[0].CurrentLeaderEpoch
		rt.Partitions = append(rt.Partitions, rp)
		resp.Topics = append(resp.Topics, rt)
		stale.Add(1)
		return resp, nil, true
	})

	rep := run(t, db, brokers, verify.Options{})
	wantCounts(t, "total", rep.Total, verify.Counts{Checked: 10, OK: 6, Truncated: 4})
	if stale.Load() != 1 {
		t.Fatalf("the stale start offset was answered %d times, want once", stale.Load())
	}
}

// The daemon's verify checks the rows sent since its previous run, widened
// back by a margin. A row's sent_at must therefore not lie before the
// moment its batch could still be open: here the batch waits for Kafka much
// longer than the margin (many waves, a slow broker), a verify run happens
// meanwhile, and the next run's window, from that run back by the margin,
// must still hold the row. (With sent_at the start of the batch's
// transaction, the row fell before every window and was never checked.)
func TestRowOfLongBatchFallsInNextWindow(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	brokers := cluster.ListenAddrs()
	const margin = 200 * time.Millisecond

	held := make(chan time.Time, 1)
	release := make(chan struct{})
	var first atomic.Bool
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if first.CompareAndSwap(false, true) {
			held <- time.Now()
			cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	db.Insert(t, messages("orders", 1)...)
	r := relay.New(relay.Config{Schema: db.Schema, BatchTimeout: time.Minute}, db.Pool, relaytest.NewProducer(t, brokers), nil)
	stop := relaytest.RunRelay(t, r)
	heldAt := <-held
	// The batch outlasts the margin: wall-clock time has to pass here,
	// there is nothing to wait on.
	relaytest.WaitFor(t, 10*time.Second, "the batch to outlast the margin", func() bool { return time.Since(heldAt) > 2*margin })
	previousRun := time.Now()
	close(release)
	relaytest.WaitFor(t, 30*time.Second, "the row sent", func() bool { return db.Count(t, "sent") == 1 })
	stop()
	rep := run(t, db, brokers, verify.Options{Since: previousRun.Add(-margin)})
	if rep.Total.Checked != 1 {
		var sentAt time.Time
		_ = db.Pool.QueryRow(context.Background(), `SELECT sent_at FROM messages`).Scan(&sentAt)
		t.Errorf("the next window (from %v) checked %d rows, want the row of the long batch (sent_at %v)",
			previousRun.Add(-margin).Format(time.StampMicro), rep.Total.Checked, sentAt.Format(time.StampMicro))
	}
}
