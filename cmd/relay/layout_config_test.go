package main

import (
	"errors"
	"strings"
	"testing"
)

// Every malformed mapping or codec is refused at load, exit 2, naming its
// variable; the database is not needed to see these.
func TestLayoutAndCompressionConfigRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env     map[string]string
		varName string
	}{
		{map[string]string{"RELAY_KAFKA_COMPRESSION": "brotli"}, "RELAY_KAFKA_COMPRESSION"},
		{map[string]string{"RELAY_DEBEZIUM_TABLE": "outboxevent"}, "RELAY_DEBEZIUM_TABLE"},
		{map[string]string{"RELAY_DEBEZIUM_TABLE": "app.outboxevent", "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT": "events.${routedByValue}.$1"}, "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT"},
		{map[string]string{"RELAY_DEBEZIUM_TABLE": "app.outboxevent", "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT": "events"}, "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT"},
		{map[string]string{"RELAY_DEBEZIUM_TABLE": "app.outboxevent", "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT": "type:envelope:eventType"}, "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT"},
		{map[string]string{"RELAY_LAYOUT_TOPIC": "orders"}, "RELAY_LAYOUT_TOPIC"},
		{map[string]string{"RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_PAYLOAD": "body"}, "RELAY_LAYOUT_TOPIC"},
		{map[string]string{"RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_TOPIC": "orders/{kind}", "RELAY_LAYOUT_PAYLOAD": "body"}, "RELAY_LAYOUT_TOPIC"},
		{map[string]string{"RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_TOPIC": "orders.{kind", "RELAY_LAYOUT_PAYLOAD": "body"}, "RELAY_LAYOUT_TOPIC"},
		{map[string]string{"RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_TOPIC": "orders"}, "RELAY_LAYOUT_PAYLOAD"},
		{map[string]string{"RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_TOPIC": "orders", "RELAY_LAYOUT_PAYLOAD": "body", "RELAY_LAYOUT_HEADERS": "id:outbox-id"}, "RELAY_LAYOUT_HEADERS"},
		{map[string]string{"RELAY_DEBEZIUM_TABLE": "app.events", "RELAY_LAYOUT_TABLE": "app.events", "RELAY_LAYOUT_TOPIC": "orders", "RELAY_LAYOUT_PAYLOAD": "body"}, "RELAY_LAYOUT_TABLE"},
	}
	for _, c := range cases {
		_, err := loadConfig(mapEnv(c.env))
		if _, ok := errors.AsType[*usageError](err); !ok || exitCode(err) != 2 {
			t.Errorf("%v: got %v, want a usage error (exit 2)", c.env, err)
			continue
		}
		if !strings.Contains(err.Error(), c.varName+": ") {
			t.Errorf("%v: %q does not name %s", c.env, err, c.varName)
		}
	}
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd", "ZSTD"} {
		if _, err := loadConfig(mapEnv(map[string]string{"RELAY_KAFKA_COMPRESSION": codec})); err != nil {
			t.Errorf("RELAY_KAFKA_COMPRESSION=%s: %v", codec, err)
		}
	}
}
