package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/outboxrelay/relay/internal/relaytest"
)

func TestTracingConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env      map[string]string
		on       bool
		endpoint string
		err      string
	}{
		{env: nil},
		{env: map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, on: true, endpoint: "http://collector:4318/v1/traces"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/otlp/traces"}, on: true, endpoint: "https://collector/otlp/traces"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true, endpoint: "http://localhost:4318/v1/traces"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: `OTEL_TRACES_EXPORTER="zipkin"`},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: `OTEL_EXPORTER_OTLP_PROTOCOL="grpc"`},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, on: true, endpoint: "http://c:4318/v1/traces"},
	}
	for _, tt := range tests {
		tp, endpoint, shutdown, err := tracing(context.Background(), mapEnv(tt.env))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || exitCode(err) != 2 {
				t.Errorf("%v: error %v, want a usage error naming %s", tt.env, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tt.env, err)
			continue
		}
		if (tp != nil) != tt.on || endpoint != tt.endpoint {
			t.Errorf("%v: tracing on %v to %q, want on %v to %q", tt.env, tp != nil, endpoint, tt.on, tt.endpoint)
		}
		if err := shutdown(context.Background()); err != nil {
			t.Errorf("%v: shutdown: %v", tt.env, err)
		}
	}
}

// otlpReceiver is an OTLP/HTTP trace receiver: it keeps the spans it is sent.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	res   []string // service.name of each span's resource
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/traces application/x-protobuf", http.StatusBadRequest)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		var service string
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				o.spans = append(o.spans, s)
				o.res = append(o.res, service)
			}
		}
	}
	o.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// linked returns the span linked to traceID/spanID, and its resource's
// service.name.
func (o *otlpReceiver) linked(traceID, spanID []byte) (*tracepb.Span, string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, s := range o.spans {
		for _, l := range s.Links {
			if bytes.Equal(l.TraceId, traceID) && bytes.Equal(l.SpanId, spanID) {
				return s, o.res[i]
			}
		}
	}
	return nil, ""
}

// A row inserted with a traceparent header leads, through the relay, to a
// batch span linked to that context at the OTLP/HTTP endpoint the standard
// variables name.
func TestRunExportsBatchSpansOverOTLP(t *testing.T) {
	t.Parallel()
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "traced")
	brokers := cluster.ListenAddrs()

	const traceID, spanID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	db.Insert(t, relaytest.Message{Topic: "traced", Key: []byte("k"), Payload: []byte("v"),
		Headers: map[string]string{"traceparent": "00-" + traceID + "-" + spanID + "-01"}})
	p := startRelay(t, relayEnv(db, brokers,
		"OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL,
		"OTEL_SERVICE_NAME", "relay-under-test",
		"OTEL_BSP_SCHEDULE_DELAY", "50",
	), "run")
	if got := p.waitLog(30*time.Second, "tracing_enabled")["otlp_endpoint"]; got != srv.URL+"/v1/traces" {
		t.Errorf("tracing_enabled otlp_endpoint %v, want %s/v1/traces", got, srv.URL)
	}

	tid, _ := hex.DecodeString(traceID)
	sid, _ := hex.DecodeString(spanID)
	var span *tracepb.Span
	var service string
	relaytest.WaitFor(t, 30*time.Second, "a span linked to the row's trace context", func() bool {
		span, service = recv.linked(tid, sid)
		return span != nil
	})
	if span.Name != "outbox_relay.batch" || span.Kind != tracepb.Span_SPAN_KIND_PRODUCER || service != "relay-under-test" {
		t.Errorf("span %q kind %v of service %q", span.Name, span.Kind, service)
	}
	var events []string
	for _, e := range span.Events {
		events = append(events, e.Name)
	}
	if strings.Join(events, ",") != "claimed,produce,acked,marked" {
		t.Errorf("span events %v", events)
	}
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}
