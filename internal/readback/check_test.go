package readback

import (
	"fmt"
	"testing"
)

func TestChecker(t *testing.T) {
	c := NewChecker()
	var told []string
	c.Errorf = func(format string, args ...any) { told = append(told, fmt.Sprintf(format, args...)) }
	add := func(id int64, key string, partition int32) bool {
		var k []byte
		if key != "" {
			k = []byte(key)
		}
		return c.Add(id, "t", k, partition)
	}
	// Key a: 1, 5, then 3 and 4 after 5 (two violations), then 6.
	for _, id := range []int64{1, 5, 3, 4, 6} {
		if !add(id, "a", 0) {
			t.Fatalf("row %d: not a first delivery", id)
		}
	}
	if add(5, "a", 0) || add(1, "a", 0) {
		t.Fatal("a second delivery counted as a first")
	}
	add(7, "b", 0)
	add(8, "b", 1)  // b split over two partitions
	add(2, "", 2)   // no key: no order
	add(9, "", 2)   // no key
	add(10, "a", 0) // still in order
	if c.OrderViolations != 2 || c.Duplicates != 2 || c.SplitKeys != 1 || c.Distinct() != 10 || c.Deliveries[5] != 2 {
		t.Fatalf("violations %d, duplicates %d, split keys %d, distinct %d, deliveries of 5 %d; want 2, 2, 1, 10, 2",
			c.OrderViolations, c.Duplicates, c.SplitKeys, c.Distinct(), c.Deliveries[5])
	}
	want := []string{
		`key "a" of t: row 3 first delivered after row 5`,
		`key "a" of t: row 4 first delivered after row 5`,
		`key "b" of t is in partitions 0 and 1`,
	}
	if fmt.Sprint(told) != fmt.Sprint(want) {
		t.Fatalf("told %q, want %q", told, want)
	}
}
