package relay_test

import (
	"slices"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// A batch is traced: one span from claim to commit, with the claimed,
// produce, acked and marked stages, linked to the trace context of each row
// that carries one; the records keep the rows' traceparent and tracestate.
func TestBatchSpanLinksRowsTraceContext(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "traced")
	brokers := cluster.ListenAddrs()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })

	const (
		parentA = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		parentB = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		stateB  = "vendor=opaque"
	)
	ids := db.Insert(t,
		relaytest.Message{Topic: "traced", Key: []byte("a"), Payload: []byte("1"), Headers: map[string]string{"traceparent": parentA}},
		relaytest.Message{Topic: "traced", Key: []byte("b"), Payload: []byte("2"), Headers: map[string]string{"traceparent": parentB, "tracestate": stateB}},
		relaytest.Message{Topic: "traced", Key: []byte("c"), Payload: []byte("3")},
	)
	runRelay(t, db, brokers, relay.Config{TracerProvider: tp})

	relaytest.WaitFor(t, 30*time.Second, "the batch span", func() bool { return len(exp.GetSpans()) > 0 })
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1 (one batch)", len(spans))
	}
	s := spans[0]
	if s.Name != "outbox_relay.batch" || s.SpanKind != trace.SpanKindProducer {
		t.Errorf("span %q kind %v, want outbox_relay.batch, producer", s.Name, s.SpanKind)
	}
	if s.Parent.IsValid() {
		t.Errorf("batch span has parent %v; rows are links", s.Parent)
	}
	links := map[string]trace.Link{}
	for _, l := range s.Links {
		links[l.SpanContext.TraceID().String()] = trace.Link{SpanContext: l.SpanContext, Attributes: l.Attributes}
	}
	a, b := links["0af7651916cd43dd8448eb211c80319c"], links["4bf92f3577b34da6a3ce929d0e0e4736"]
	if len(links) != 2 || a.SpanContext.SpanID().String() != "b7ad6b7169203331" || b.SpanContext.SpanID().String() != "00f067aa0ba902b7" {
		t.Fatalf("links %v, want the two rows' contexts", s.Links)
	}
	if b.SpanContext.TraceState().String() != stateB || !b.SpanContext.IsSampled() || !b.SpanContext.IsRemote() {
		t.Errorf("link of row b: %+v", b.SpanContext)
	}
	if len(a.Attributes) != 1 || a.Attributes[0].Key != "outbox.id" || a.Attributes[0].Value.AsInt64() != ids[0] {
		t.Errorf("link of row a has attributes %v, want outbox.id=%d", a.Attributes, ids[0])
	}
	var events []string
	for _, e := range s.Events {
		events = append(events, e.Name)
	}
	if want := []string{"claimed", "produce", "acked", "marked"}; !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}
	if s.Status.Code != 0 {
		t.Errorf("status %v, want unset", s.Status)
	}
	if db.Count(t, "sent") != 3 {
		t.Errorf("%d rows sent when the span ended, want 3 (it ends after the commit)", db.Count(t, "sent"))
	}

	recs := relaytest.Consume(t, brokers, 3, 30*time.Second, "traced")
	for _, r := range recs {
		tp, _ := relaytest.Header(r, "traceparent")
		ts, _ := relaytest.Header(r, "tracestate")
		switch string(r.Key) {
		case "a":
			if tp != parentA {
				t.Errorf("record a: traceparent %q", tp)
			}
		case "b":
			if tp != parentB || ts != stateB {
				t.Errorf("record b: traceparent %q tracestate %q", tp, ts)
			}
		}
	}
}
