package kafkasink

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/layout"
)

// appendUUID prints a uuid as Postgres and pgtype do, so outbox-uuid is the
// text consumers find in the uuid column.
func TestAppendUUIDIsTheCanonicalForm(t *testing.T) {
	t.Parallel()
	for range 100 {
		u := pgtype.UUID{Valid: true}
		_, _ = rand.Read(u.Bytes[:])
		if got, want := string(appendUUID([]byte("x"), u.Bytes)), "x"+u.String(); got != want {
			t.Fatalf("appendUUID = %s, want %s", got, want)
		}
	}
}

// The layouts put their mapped timestamp in the header recordTime reads.
func TestLayoutTimestampHeaderIsRead(t *testing.T) {
	t.Parallel()
	if layout.TimestampHeader != HeaderTimestamp {
		t.Fatalf("layout.TimestampHeader %q, kafkasink.HeaderTimestamp %q: the mapped timestamp would be ignored",
			layout.TimestampHeader, HeaderTimestamp)
	}
}

// A produce timeout that passed, or a batch timeout, is named as such and
// classified as the client's own record timeout was: an outage. Another
// batch's context failing our records, or shutdown, stays the context error.
func TestGaveUpNamesTheTimeout(t *testing.T) {
	t.Parallel()
	s := &Sink{opts: Options{ProduceTimeout: time.Millisecond, BatchTimeout: time.Hour}}
	ctx := context.Background()
	batch, cancelBatch := s.giveUpAfter(ctx)
	defer cancelBatch()
	within, cancel := s.produceWithin(batch)
	defer cancel()
	<-within.Done()
	err := s.gaveUp(ctx, within, context.DeadlineExceeded)
	if !errors.Is(err, kgo.ErrRecordTimeout) || !strings.Contains(err.Error(), "produce timeout") || Classify(err) != Outage {
		t.Errorf("produce timeout passed: %v (%v), want errProduceTimeout, an outage", err, Classify(err))
	}
	short := &Sink{opts: Options{ProduceTimeout: time.Hour, BatchTimeout: time.Millisecond}}
	batch, cancelBatch = short.giveUpAfter(ctx)
	defer cancelBatch()
	within, cancel = short.produceWithin(batch)
	defer cancel()
	<-within.Done()
	if err := short.gaveUp(ctx, within, context.DeadlineExceeded); !errors.Is(err, errBatchTimeout) || Classify(err) != Outage {
		t.Errorf("batch timeout passed: %v, want errBatchTimeout, an outage", err)
	}
	open, cancelOpen := s.produceWithin(ctx)
	defer cancelOpen()
	if err := s.gaveUp(ctx, open, context.DeadlineExceeded); err != context.DeadlineExceeded || Classify(err) != Outage {
		t.Errorf("another batch's deadline: %v, want the context error, an outage", err)
	}
}

// A record's timestamp is the row's mapped timestamp when its header holds
// epoch milliseconds, else its created_at.
func TestRecordTimeIsTheRows(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, c := range []struct {
		headers string
		want    time.Time
	}{
		{``, created},
		{`{"a": "b"}`, created},
		{`{"outbox-timestamp": "1767323045678"}`, time.UnixMilli(1767323045678)},
		{`{"outbox-timestamp": "yesterday"}`, created},
		{`{"outbox-timestamp": "-5"}`, created},
	} {
		rec, _, err := buildRecord(row{ID: 1, Topic: "t", Headers: []byte(c.headers), CreatedAt: created})
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Timestamp.Equal(c.want) {
			t.Errorf("headers %s: timestamp %v, want %v", c.headers, rec.Timestamp, c.want)
		}
	}
}
