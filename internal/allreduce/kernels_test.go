package allreduce

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// badValues are values the range check must refuse: NaNs (quiet and
// signalling, either sign), infinities, and the smallest magnitudes beyond
// MaxAbs.
var badValues = []float32{
	float32(math.NaN()), math.Float32frombits(0xffc00001), math.Float32frombits(0x7f800001),
	float32(math.Inf(1)), float32(math.Inf(-1)),
	math.Nextafter32(MaxAbs, math.MaxFloat32), -math.Nextafter32(MaxAbs, math.MaxFloat32),
	-2 * MaxAbs, 1e9, math.MaxFloat32,
}

// badPositions returns the positions of an n-value update where a bad value
// is planted: every lane of the first two blocks, the first and last lane of
// the blocks around each chunk boundary, the last whole block, the tail
// after it (the generic kernel's share on amd64), and a few random others.
func badPositions(r *rand.Rand, n int) []int {
	var ps []int
	for i := range 2 * checkBlock {
		ps = append(ps, i)
	}
	for c := foldChunk; c < n; c += foldChunk {
		ps = append(ps, c-checkBlock, c-1, c, c+1, c+checkBlock-1, c+checkBlock)
	}
	whole := n &^ (checkBlock - 1)
	ps = append(ps, whole-checkBlock, whole-1, whole, whole+1, n-2, n-1)
	for range 8 {
		ps = append(ps, r.IntN(n))
	}
	slices.Sort(ps)
	ps = slices.Compact(ps)
	return slices.DeleteFunc(ps, func(p int) bool { return p < 0 || p >= n })
}

// TestCheckedFoldAgreesWithGenericCheck plants bad values at every class of
// position in random updates and checks that the checked fold in use (AVX2
// on amd64, else generic) stops at the block the generic range check
// condemns, has folded exactly the values before it, bit for bit as the
// generic fold, and that subtracting them again restores the sum exactly.
func TestCheckedFoldAgreesWithGenericCheck(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{1, 7, checkBlock - 1, checkBlock, checkBlock + 1, 3*checkBlock + 5, 2*foldChunk + 3*checkBlock + 17} {
		x := make([]float32, n)
		for i := range x {
			switch r.IntN(8) {
			case 0:
				x[i] = MaxAbs
			case 1:
				x[i] = -MaxAbs
			default:
				x[i] = float32(r.NormFloat64() * 1e-2)
			}
		}
		const maxWeight = 60000
		a, err := NewAccumulator(n, maxWeight)
		if err != nil {
			t.Fatal(err)
		}
		f := float64(1+r.IntN(maxWeight)) * a.scale
		before := make([]int64, n)
		for i := range before {
			before[i] = r.Int64N(1<<50) - 1<<49
		}
		s := slices.Clone(before)
		if k := foldChecked(s, x, f); k != n {
			t.Fatalf("n=%d: a clean update stopped at %d", n, k)
		}
		want := slices.Clone(before)
		foldGeneric(want, x, f)
		if !slices.Equal(s, want) {
			t.Fatalf("n=%d: clean checked fold differs from the generic fold", n)
		}
		for _, p := range badPositions(r, n) {
			bad := badValues[r.IntN(len(badValues))]
			old := x[p]
			x[p] = bad
			// The generic check condemns the block holding p; with a
			// second bad value further on, still that block.
			block := p &^ (checkBlock - 1)
			if inRangeGeneric(x[block:min(block+checkBlock, n)]) || !inRangeGeneric(x[:block]) {
				t.Fatalf("n=%d: generic check does not condemn exactly block %d for %v at %d", n, block, bad, p)
			}
			second := -1
			if r.IntN(2) == 0 && p+1 < n {
				second = p + 1 + r.IntN(n-p-1)
				x[second] = badValues[r.IntN(len(badValues))]
			}
			s := slices.Clone(before)
			k := foldChecked(s, x, f)
			if k != block {
				t.Fatalf("n=%d: %v at %d: checked fold stopped at %d, want the block at %d", n, bad, p, k, block)
			}
			want := slices.Clone(before)
			foldGeneric(want[:k], x[:k], f)
			if !slices.Equal(s, want) {
				t.Fatalf("n=%d: %v at %d: the sum after stopping is not the generic fold of the %d values before", n, bad, p, k)
			}
			fold(s[:k], x[:k], -f)
			if !slices.Equal(s, before) {
				t.Fatalf("n=%d: %v at %d: rolling back %d values did not restore the sum", n, bad, p, k)
			}
			x[p] = old
			if second >= 0 {
				x[second] = float32(r.NormFloat64() * 1e-2)
			}
		}
	}
}
