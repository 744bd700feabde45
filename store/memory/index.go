package memory

import (
	"slices"
	"sort"
)

// keyIndex keeps keys sorted for prefix listing, in blocks of bounded size
// so that an insert or delete moves at most a block's worth of strings
// (a single sorted slice made inserts O(n): 2,000 creates/s at 500k keys).
type keyIndex struct {
	blocks [][]string // each sorted and non-empty; blocks ordered
}

const maxBlock = 1024

// block returns the index of the block that holds or would hold k.
func (x *keyIndex) block(k string) int {
	i := sort.Search(len(x.blocks), func(i int) bool { return x.blocks[i][0] > k })
	if i == 0 {
		return 0
	}
	return i - 1
}

func (x *keyIndex) insert(k string) {
	if len(x.blocks) == 0 {
		x.blocks = [][]string{{k}}
		return
	}
	bi := x.block(k)
	b := x.blocks[bi]
	i := sort.SearchStrings(b, k)
	if i < len(b) && b[i] == k {
		return
	}
	b = slices.Insert(b, i, k)
	if len(b) > maxBlock {
		mid := len(b) / 2
		upper := append([]string(nil), b[mid:]...)
		x.blocks = slices.Insert(x.blocks, bi+1, upper)
		b = b[:mid:mid]
	}
	x.blocks[bi] = b
}

func (x *keyIndex) remove(k string) {
	if len(x.blocks) == 0 {
		return
	}
	bi := x.block(k)
	b := x.blocks[bi]
	i := sort.SearchStrings(b, k)
	if i == len(b) || b[i] != k {
		return
	}
	b = slices.Delete(b, i, i+1)
	if len(b) == 0 {
		x.blocks = slices.Delete(x.blocks, bi, bi+1)
		return
	}
	x.blocks[bi] = b
}

// ascend calls fn for each key >= from, in order, until fn returns false.
func (x *keyIndex) ascend(from string, fn func(k string) bool) {
	for bi := x.block(from); bi < len(x.blocks); bi++ {
		b := x.blocks[bi]
		for i := sort.SearchStrings(b, from); i < len(b); i++ {
			if !fn(b[i]) {
				return
			}
		}
	}
}
