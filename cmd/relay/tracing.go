package main

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// tracing returns the tracer provider that exports the relay's batch spans
// over OTLP/HTTP as the standard OTEL_* variables say, and its shutdown
// (which flushes). Tracing is off, and tp nil, unless one of them asks for
// it: OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set,
// or OTEL_TRACES_EXPORTER=otlp; OTEL_TRACES_EXPORTER=none or
// OTEL_SDK_DISABLED=true turn it off whatever else is set. The exporter and
// the SDK read the other OTEL_* variables themselves (headers, timeout,
// compression, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*).
func tracing(ctx context.Context, getenv func(string) string) (tp trace.TracerProvider, endpoint string, shutdown func(context.Context) error, err error) {
	off := func(context.Context) error { return nil }
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return nil, "", off, nil
	}
	tracesEndpoint, baseEndpoint := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	switch exp := getenv("OTEL_TRACES_EXPORTER"); exp {
	case "none":
		return nil, "", off, nil
	case "":
		if tracesEndpoint == "" && baseEndpoint == "" {
			return nil, "", off, nil
		}
	case "otlp":
	default:
		return nil, "", off, usageErrorf("OTEL_TRACES_EXPORTER=%q: the relay exports traces with otlp (or none)", exp)
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := getenv(name); p != "" && p != "http/protobuf" {
			return nil, "", off, usageErrorf("%s=%q: the relay exports traces over http/protobuf only", name, p)
		}
		if getenv(name) != "" {
			break // the traces-specific one wins
		}
	}
	var opts []otlptracehttp.Option
	switch {
	case tracesEndpoint != "":
		endpoint = tracesEndpoint
	case baseEndpoint != "":
		endpoint = strings.TrimSuffix(baseEndpoint, "/") + "/v1/traces"
	default:
		endpoint = "http://localhost:4318/v1/traces"
	}
	opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
	exporter, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, "", off, usageErrorf("OTEL_EXPORTER_OTLP_ENDPOINT: %v", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "outbox-relay"), attribute.String("service.version", versionString())),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	)
	if err != nil {
		return nil, "", off, usageErrorf("OTEL_RESOURCE_ATTRIBUTES: %v", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return sdk, endpoint, sdk.Shutdown, nil
}
