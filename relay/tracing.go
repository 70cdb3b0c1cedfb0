package relay

import (
	"context"
	"encoding/json"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the relay's spans.
const tracerName = "github.com/outboxrelay/relay/relay"

// batchTrace is the span of one batch, "outbox_relay.batch": it starts when
// the batch's claim begins and ends after the batch's commit, with one
// event per stage (claimed, produce, acked, marked). A row whose headers
// carry W3C trace context (traceparent, and tracestate) is linked to the
// span, so the trace of the request that wrote the row leads to the batch
// that delivered it; the record itself carries those headers unchanged, so
// the consumer continues the writer's trace. Links, not a parent: a batch
// delivers rows of many traces. The SDK keeps 128 links per span unless
// OTEL_SPAN_LINK_COUNT_LIMIT says otherwise.
type batchTrace struct {
	span trace.Span
}

// traceBatch starts the span of batch b, whose rows are claimed; without a
// TracerProvider it records nothing and costs nothing.
func (r *Relay) traceBatch(b *batch) batchTrace {
	if r.cfg.TracerProvider == nil {
		return batchTrace{}
	}
	var links []trace.Link
	for _, x := range b.rows {
		if sc := rowSpanContext(x.Headers); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.Int64("outbox.id", x.ID)}})
		}
	}
	_, span := r.cfg.TracerProvider.Tracer(tracerName).Start(context.Background(), "outbox_relay.batch",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithTimestamp(b.started),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "send"),
			attribute.Int("messaging.batch.message_count", len(b.rows)),
			attribute.String("outbox.schema", r.cfg.Schema),
			attribute.String("outbox.instance", r.cfg.Instance),
		))
	span.AddEvent("claimed", trace.WithAttributes(attribute.Int("rows", len(b.rows))))
	span.AddEvent("produce")
	return batchTrace{span: span}
}

// acked records Kafka's answer to the batch.
func (t batchTrace) acked(out outcome) {
	if t.span == nil {
		return
	}
	t.span.AddEvent("acked", trace.WithAttributes(attribute.Int("sent", len(out.sentIDs)), attribute.Int("failed", len(out.failed))))
	if out.outage() {
		t.span.SetStatus(codes.Error, "kafka unavailable: "+out.failed[0].err.Error())
	}
}

// marked records the commit of the batch's outcome.
func (t batchTrace) marked(escalated int) {
	if t.span == nil {
		return
	}
	t.span.AddEvent("marked", trace.WithAttributes(attribute.Int("escalated", escalated)))
}

// fail records why the batch did not commit.
func (t batchTrace) fail(err error) {
	if t.span == nil {
		return
	}
	t.span.RecordError(err)
	t.span.SetStatus(codes.Error, err.Error())
}

func (t batchTrace) end() {
	if t.span != nil {
		t.span.End(trace.WithTimestamp(time.Now()))
	}
}

// rowSpanContext reads the W3C trace context from a row's headers (raw
// jsonb text); invalid when they carry none. Malformed headers are the
// record builder's to reject, not this function's.
func rowSpanContext(raw []byte) trace.SpanContext {
	var h map[string]any
	if json.Unmarshal(raw, &h) != nil {
		return trace.SpanContext{}
	}
	carrier := propagation.MapCarrier{}
	for _, k := range []string{"traceparent", "tracestate"} {
		if v, ok := h[k].(string); ok {
			carrier[k] = v
		}
	}
	if carrier["traceparent"] == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
}
