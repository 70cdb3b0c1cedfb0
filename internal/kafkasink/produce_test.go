package kafkasink

import (
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// groups bounds, per topic, the bytes handed to the client at once only
// where the client's own batches may not fit the topic.
func TestGroupsBoundOnlyTopicsTheClientCannotFit(t *testing.T) {
	t.Parallel()
	var recs []*kgo.Record
	for range 10 {
		recs = append(recs, &kgo.Record{Topic: "unknown", Value: make([]byte, 10_000)})
		recs = append(recs, &kgo.Record{Topic: "known", Value: make([]byte, 10_000)})
	}
	recs = append(recs, nil) // a row refused before producing
	s := &Sink{}
	count := func(groups [][]int, topic string) []int {
		var n []int
		for _, g := range groups {
			c := 0
			for _, i := range g {
				if recs[i].Topic == topic {
					c++
				}
			}
			n = append(n, c)
		}
		return n
	}
	cases := []struct {
		name    string
		unknown topicVerdict
		want    []int // records of topic "unknown" in each group
	}{
		{"limit unknown: 64 KiB groups", topicVerdict{}, []int{6, 4}},
		{"limit unknown, grown to 256 KiB", topicVerdict{grown: 256 << 10}, []int{10}},
		{"rejected as too large, 25 KB fit alone", topicVerdict{fits: 25_000}, []int{2, 2, 2, 2, 2}},
		{"rejected as too large, none fit alone", topicVerdict{fits: 1}, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"limit known, smaller than the client's", topicVerdict{maxBytes: 30_000}, []int{2, 2, 2, 2, 2}},
	}
	for _, c := range cases {
		verdicts := map[string]topicVerdict{"unknown": c.unknown, "known": {maxBytes: 1_048_588}}
		groups := s.groups(recs, verdicts)
		if got := count(groups, "unknown"); !slices.Equal(got, c.want) {
			t.Errorf("%s: records of the topic per group %v, want %v", c.name, got, c.want)
		}
		if got := count(groups, "known"); got[0] != 10 {
			t.Errorf("%s: records of the topic the client fits per group %v, want all 10 in the first", c.name, got)
		}
	}
}
