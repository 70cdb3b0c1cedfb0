package pgstore

import (
	"fmt"
	"testing"
)

// TestFitting checks the byte bound's rule: a row fits while the sizes of
// the rows before it add up to less than the bound; the first always fits.
func TestFitting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sizes []int64
		bound int64
		want  int
	}{
		{nil, 10, 0},
		{[]int64{3, 3, 3}, 10, 3},
		{[]int64{4, 4, 4}, 8, 2},    // 8 bytes before the third: at the bound
		{[]int64{4, 4, 4}, 9, 3},    // 8 before the third: under it
		{[]int64{100, 1, 1}, 10, 1}, // a row larger than the bound goes alone
		{[]int64{1, 100, 1}, 10, 2}, // the bytes before the large row are under the bound
		{[]int64{0, 0, 0, 0}, 1, 4}, // empty rows add nothing
		{[]int64{5, 5, 5, 5}, 0, 1}, // a bound of 0 still lets one row go
	} {
		t.Run(fmt.Sprint(tc.sizes, tc.bound), func(t *testing.T) {
			got := fitting(tc.sizes, func(n int64) int64 { return n }, tc.bound)
			if got != tc.want {
				t.Errorf("fitting(%v, %d) = %d, want %d", tc.sizes, tc.bound, got, tc.want)
			}
		})
	}
}
