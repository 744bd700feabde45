package memory

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The block index must agree with a plain sorted set through block splits
// and deletions that empty blocks.
func TestKeyIndexMatchesSortedSet(t *testing.T) {
	var x keyIndex
	want := map[string]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		k := fmt.Sprintf("/k/%05d", rng.IntN(5000))
		if i%3 == 2 {
			x.remove(k)
			delete(want, k)
		} else {
			x.insert(k)
			want[k] = true
		}
	}
	var sorted []string
	for k := range want {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	var got []string
	x.ascend("", func(k string) bool { got = append(got, k); return true })
	require.Equal(t, sorted, got)
	for _, b := range x.blocks {
		assert.NotEmpty(t, b)
		assert.LessOrEqual(t, len(b), maxBlock)
	}
	// ascend from the middle, and stopping early.
	from := sorted[len(sorted)/2]
	var tail []string
	x.ascend(from, func(k string) bool { tail = append(tail, k); return len(tail) < 10 })
	assert.Equal(t, sorted[len(sorted)/2:len(sorted)/2+10], tail)
}
