package kafkasink

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/kafkatest"
)

// checkTopic reads how old a timestamp the topic takes: the smaller of its
// two bounds, none for Kafka's default (Long.MAX_VALUE), and none when the
// broker stamps records itself.
func TestCheckTopicReadsTheTimestampBound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		configs map[string]string
		want    time.Duration
	}{
		{"defaults", map[string]string{"message.timestamp.before.max.ms": "9223372036854775807", "message.timestamp.difference.max.ms": "9223372036854775807"}, 0},
		{"before", map[string]string{"message.timestamp.before.max.ms": "3600000"}, time.Hour},
		{"the smaller", map[string]string{"message.timestamp.before.max.ms": "7200000", "message.timestamp.difference.max.ms": "60000"}, time.Minute},
		{"log append time", map[string]string{"message.timestamp.before.max.ms": "3600000", "message.timestamp.type": "LogAppendTime"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
			if err != nil {
				t.Fatal(err)
			}
			defer cluster.Close()
			kafkatest.ServeTopicConfigs(cluster, tc.configs)
			client, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			set, err := checkTopic(context.Background(), kadm.NewClient(client), "t")
			if err != nil {
				t.Fatal(err)
			}
			if set.oldest != tc.want {
				t.Errorf("oldest = %v, want %v", set.oldest, tc.want)
			}
		})
	}
}

// stampWithin leaves a timestamp the topic takes, and gives one it would
// refuse (with a tenth of the bound kept for the clocks' skew) the time of
// the produce.
func TestStampWithin(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		age, oldest time.Duration
		restamped   bool
	}{
		{48 * time.Hour, 0, false},
		{50 * time.Minute, time.Hour, false},
		{55 * time.Minute, time.Hour, true},
		{48 * time.Hour, time.Hour, true},
	} {
		rec := &kgo.Record{Timestamp: now.Add(-tc.age)}
		stampWithin(rec, tc.oldest, now)
		if got := rec.Timestamp.Equal(now); got != tc.restamped {
			t.Errorf("age %v, bound %v: timestamp %v; restamped %v, want %v", tc.age, tc.oldest, rec.Timestamp, got, tc.restamped)
		}
	}
}
