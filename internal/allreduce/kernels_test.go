package allreduce

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
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

// splitSums returns the halves of the sums s as the accumulator stores
// them: lo[i] = int32(s[i]), hi[i] = (s[i] − lo[i]) / 2^32.
func splitSums(s []int64) (lo, hi []int32) {
	lo, hi = make([]int32, len(s)), make([]int32, len(s))
	for i, v := range s {
		lo[i] = int32(v)
		hi[i] = int32((v - int64(lo[i])) >> 32)
	}
	return lo, hi
}

// joinSums returns the int64 sums whose halves are lo and hi.
func joinSums(lo, hi []int32) []int64 {
	s := make([]int64, len(lo))
	for i := range s {
		s[i] = int64(hi[i])<<32 + int64(lo[i])
	}
	return s
}

// canonical reports whether lo and hi are the halves splitSums gives for
// their sums, with the high half within the ±2^19 that |sum| ≤ 2^51 allows.
func canonical(lo, hi []int32) bool {
	wlo, whi := splitSums(joinSums(lo, hi))
	return slices.Equal(lo, wlo) && slices.Equal(hi, whi) &&
		!slices.ContainsFunc(hi, func(h int32) bool { return h < -1<<19 || h > 1<<19 })
}

// sums returns the accumulator's sums as int64.
func (a *Accumulator) sums() []int64 { return joinSums(a.lo, a.hi) }

// foldInt64 is the definition every fold kernel must meet, on plain int64
// sums: s[i] += RoundToEven(x[i]·f), the product being exact.
func foldInt64(s []int64, x []float32, f float64) {
	for i, v := range x {
		s[i] += int64(math.RoundToEven(float64(v) * f))
	}
}

// nearCarry returns a sum whose low half is within a few units of a carry
// (lo near ±2^31) or of zero, or anywhere, with a random high half; the sum
// stays within ±2^50, so that a term of up to 2^50 keeps it within 2^51.
func nearCarry(r *rand.Rand) int64 {
	hi := r.Int64N(1<<18) - 1<<17
	var lo int64
	switch r.IntN(4) {
	case 0:
		lo = 1<<31 - 1 - r.Int64N(4)
	case 1:
		lo = -1<<31 + r.Int64N(4)
	case 2:
		lo = r.Int64N(9) - 4
	default:
		lo = r.Int64N(1<<32) - 1<<31
	}
	return hi<<32 + lo
}

// carryFactors and carryValues give terms x·f at int32's edges: −2^31
// exactly, ±(2^31 − 1), ties either side of ±2^31, 2^31 itself, and terms
// from small to 2^50. Every product is exact, as the accumulator's are (a
// factor has at most 33 significant bits, a value at most 17).
var (
	carryFactors = []float64{0x1p31, 0x1p31 - 1, 0x1p31 - 0.5, 0x1p31 + 0.5, 0x1p32 - 1, 0x1p30, 0x1p36, 3}
	carryValues  = []float32{0, 1, -1, 0.5, -0.5, 2, -2, 1.5, -1.5, 0.25, -0.25, 0x1.5p-10, -0x1.5p-10, 0x1.ffffp13, MaxAbs, -MaxAbs, 0x1p-40}
)

// TestFoldMatchesInt64Definition folds values into sums near the carries
// between the halves, with terms at int32's edges and beyond, for every
// length up to three blocks (on amd64 the AVX2 kernel takes the whole
// blocks, the generic one the rest), and checks the sums against the int64
// definition, the halves against the generic kernel's bit for bit, and
// that folding with −f restores both halves.
func TestFoldMatchesInt64Definition(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	t.Logf("kernel %s", Kernel())
	for n := 0; n <= 3*checkBlock+5; n++ {
		// A random factor as the accumulator makes them: a weight of up
		// to 29 bits times a power of two.
		for _, f := range append(carryFactors, float64(1+r.IntN(1<<29))*0x1p-20) {
			for _, sign := range []float64{1, -1} {
				f := sign * f
				x := make([]float32, n)
				before := make([]int64, n)
				for i := range x {
					x[i] = carryValues[r.IntN(len(carryValues))]
					before[i] = nearCarry(r)
				}
				want := slices.Clone(before)
				foldInt64(want, x, f)
				lo0, hi0 := splitSums(before)
				glo, ghi := slices.Clone(lo0), slices.Clone(hi0)
				foldGeneric(glo, ghi, x, f)
				for _, checked := range []bool{false, true} {
					lo, hi := slices.Clone(lo0), slices.Clone(hi0)
					if checked {
						if k := foldChecked(lo, hi, x, f); k != n {
							t.Fatalf("n=%d f=%v: clean values stopped the checked fold at %d", n, f, k)
						}
					} else {
						fold(lo, hi, x, f)
					}
					if got := joinSums(lo, hi); !slices.Equal(got, want) || !canonical(lo, hi) {
						i := firstDiff(got, want)
						t.Fatalf("n=%d f=%v checked=%v: sum[%d] = %d + %v·f gave %d (halves %d, %d), want %d",
							n, f, checked, i, before[i], x[i], got[i], lo[i], hi[i], want[i])
					}
					if !slices.Equal(lo, glo) || !slices.Equal(hi, ghi) {
						t.Fatalf("n=%d f=%v checked=%v: halves differ from the generic kernel's", n, f, checked)
					}
					fold(lo, hi, x, -f)
					if !slices.Equal(lo, lo0) || !slices.Equal(hi, hi0) {
						t.Fatalf("n=%d f=%v checked=%v: folding with −f did not restore the halves", n, f, checked)
					}
				}
			}
		}
	}
}

// TestFoldEdgeAtEveryLane puts one term at int32's edge, or one sum about
// to carry, at every position of two blocks and a tail, all other terms
// being zero: the AVX2 fast path must notice it in whichever lane it is
// (an out-of-range term reads as −2^31, a carry is an int32 overflow) and
// leave the block to the exact 64-bit path.
func TestFoldEdgeAtEveryLane(t *testing.T) {
	const n = 2*checkBlock + 9
	for _, c := range []struct {
		x     float32
		f     float64
		start int64
	}{
		{1, 0x1p31, 0},               // 2^31: beyond int32
		{-1, 0x1p31, 0},              // −2^31 exactly, no carry
		{-1, 0x1p31, -1},             // −2^31 exactly, carrying
		{-1, 0x1p31 + 1, 0},          // −2^31 − 1: beyond int32
		{1, 0x1p31 - 0.5, 0},         // a tie, rounded to 2^31
		{-1, 0x1p31 - 0.5, 5},        // a tie, rounded to −2^31
		{MaxAbs, 0x1p36, -(1 << 49)}, // 2^50
		{1, 1, 1<<31 - 1},            // lo overflows upwards
		{-1, 1, -1 << 31},            // and downwards
		{1, 1, 3<<32 - 1},            // a sum crossing zero in lo: no carry
		{-1, 1, -5 << 32},
		{0.5, 1, 1<<31 - 1},   // a tie, rounded to 0
		{1.5, 1, 1<<31 - 2},   // a tie, rounded to 2, carrying
		{-2.5, 1, -1<<31 + 1}, // a tie, rounded to −2, carrying
	} {
		for p := range n {
			x := make([]float32, n)
			before := make([]int64, n)
			for i := range before {
				before[i] = 7
			}
			x[p], before[p] = c.x, c.start
			want := slices.Clone(before)
			foldInt64(want, x, c.f)
			lo0, hi0 := splitSums(before)
			for _, checked := range []bool{false, true} {
				lo, hi := slices.Clone(lo0), slices.Clone(hi0)
				if checked {
					foldChecked(lo, hi, x, c.f)
				} else {
					fold(lo, hi, x, c.f)
				}
				if got := joinSums(lo, hi); !slices.Equal(got, want) || !canonical(lo, hi) {
					i := firstDiff(got, want)
					t.Fatalf("%d + %v·%v at %d (checked %v): sum[%d]=%d, want %d", c.start, c.x, c.f, p, checked, i, got[max(i, 0)], want[max(i, 0)])
				}
				fold(lo, hi, x, -c.f)
				if !slices.Equal(lo, lo0) || !slices.Equal(hi, hi0) {
					t.Fatalf("%d + %v·%v at %d (checked %v): folding with −f did not restore the halves", c.start, c.x, c.f, p, checked)
				}
			}
		}
	}
}

// firstDiff returns the first index where a and b differ, or -1.
func firstDiff(a, b []int64) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestAddedSumsAreTheInt64Definition adds random updates to accumulators of
// every kind of scale, the smallest total weights included (where one
// update's terms reach 2^51), and checks the sums are those of the int64
// definition, sum of RoundToEven(x·weight·2^frac), and the mean is that
// sum's.
func TestAddedSumsAreTheInt64Definition(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	const n = foldChunk + 3*checkBlock + 7
	for _, maxWeight := range []int64{1, 3, 600, 6000, 60000, MaxTotalWeight} {
		a, err := NewAccumulator(n, maxWeight)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]int64, n)
		for left := maxWeight; left > 0; {
			w := min(left, 1+r.Int64N(maxWeight/3+1))
			left -= w
			x := make([]float32, n)
			for i := range x {
				switch r.IntN(3) {
				case 0:
					x[i] = float32(r.NormFloat64() * 1e-2)
				case 1:
					x[i] = float32((r.Float64()*2 - 1) * MaxAbs)
				default:
					x[i] = carryValues[r.IntN(len(carryValues))]
				}
			}
			if err := a.Add(x, w); err != nil {
				t.Fatal(err)
			}
			foldInt64(want, x, float64(w)*a.scale)
			checkSums(t, a, want, "max weight "+strconv.FormatInt(maxWeight, 10))
		}
		checkMean(t, a, want, "max weight "+strconv.FormatInt(maxWeight, 10))
	}
}

// TestRejectedLargeTermsLeaveSumUnchanged is TestRejectedUpdateLeavesSumUnchanged
// where folds carry between the halves: sums near the carries and terms up
// to 2^51, a bad value at every class of position; the rollback must
// restore both halves bit for bit.
func TestRejectedLargeTermsLeaveSumUnchanged(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	const n = 2*foldChunk + 45
	for _, maxWeight := range []int64{1, 600} {
		a, err := NewAccumulator(n, 2*maxWeight)
		if err != nil {
			t.Fatal(err)
		}
		start := make([]int64, n)
		for i := range start {
			start[i] = nearCarry(r)
		}
		a.lo, a.hi = splitSums(start)
		lo, hi := slices.Clone(a.lo), slices.Clone(a.hi)
		u := make([]float32, n)
		for i := range u {
			u[i] = float32((r.Float64()*2 - 1) * MaxAbs)
			if i%3 == 0 {
				u[i] = carryValues[r.IntN(len(carryValues))]
			}
		}
		for _, pos := range badPositions(r, n) {
			bad := badValues[r.IntN(len(badValues))]
			old := u[pos]
			u[pos] = bad
			err := a.Add(u, maxWeight)
			if err == nil || !strings.Contains(err.Error(), "update value "+strconv.Itoa(pos)+" is") {
				t.Fatalf("bad value %v at %d: error %v", bad, pos, err)
			}
			if !slices.Equal(a.lo, lo) || !slices.Equal(a.hi, hi) || a.Count() != 0 {
				t.Fatalf("max weight %d: bad value %v at %d changed the accumulator", maxWeight, bad, pos)
			}
			u[pos] = old
		}
		if err := a.Add(u, maxWeight); err != nil {
			t.Fatal(err)
		}
		foldInt64(start, u, float64(maxWeight)*a.scale)
		if got := a.sums(); !slices.Equal(got, start) {
			t.Fatalf("max weight %d: after the rejections, a clean update gave wrong sums", maxWeight)
		}
	}
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
		lo0, hi0 := splitSums(before)
		lo, hi := slices.Clone(lo0), slices.Clone(hi0)
		if k := foldChecked(lo, hi, x, f); k != n {
			t.Fatalf("n=%d: a clean update stopped at %d", n, k)
		}
		wlo, whi := slices.Clone(lo0), slices.Clone(hi0)
		foldGeneric(wlo, whi, x, f)
		if !slices.Equal(lo, wlo) || !slices.Equal(hi, whi) {
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
			lo, hi := slices.Clone(lo0), slices.Clone(hi0)
			k := foldChecked(lo, hi, x, f)
			if k != block {
				t.Fatalf("n=%d: %v at %d: checked fold stopped at %d, want the block at %d", n, bad, p, k, block)
			}
			wlo, whi := slices.Clone(lo0), slices.Clone(hi0)
			foldGeneric(wlo[:k], whi[:k], x[:k], f)
			if !slices.Equal(lo, wlo) || !slices.Equal(hi, whi) {
				t.Fatalf("n=%d: %v at %d: the sum after stopping is not the generic fold of the %d values before", n, bad, p, k)
			}
			fold(lo[:k], hi[:k], x[:k], -f)
			if !slices.Equal(lo, lo0) || !slices.Equal(hi, hi0) {
				t.Fatalf("n=%d: %v at %d: rolling back %d values did not restore the sum", n, bad, p, k)
			}
			x[p] = old
			if second >= 0 {
				x[second] = float32(r.NormFloat64() * 1e-2)
			}
		}
	}
}

// TestLargeAccumulatorLayout covers an accumulator big enough for loSkew:
// lo starts inside the shared buffer, Bytes counts the skew, and Add, Mean
// and Reset still meet the int64 definition on both planes.
func TestLargeAccumulatorLayout(t *testing.T) {
	const n = 1<<20 + 37
	a, err := NewAccumulator(n, 6000)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.Bytes(), 8*n+64<<10; got != want {
		t.Fatalf("Bytes() = %d, want %d", got, want)
	}
	if len(a.lo) != n || len(a.hi) != n || cap(a.lo) != n {
		t.Fatalf("planes: lo %d (cap %d), hi %d; want %d each", len(a.lo), cap(a.lo), len(a.hi), n)
	}
	r := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for round := range 2 {
		want := make([]int64, n)
		for _, w := range []int64{600, 5400} {
			if err := a.Add(x, w); err != nil {
				t.Fatal(err)
			}
			foldInt64(want, x, float64(w)*a.scale)
		}
		checkSums(t, a, want, "round "+strconv.Itoa(round))
		checkMean(t, a, want, "round "+strconv.Itoa(round))
		a.Reset()
		if slices.ContainsFunc(a.lo, func(v int32) bool { return v != 0 }) || slices.ContainsFunc(a.hi, func(v int32) bool { return v != 0 }) {
			t.Fatalf("round %d: Reset left nonzero sums", round)
		}
	}
}

// checkSums fails unless a's sums are want, held in canonical halves.
func checkSums(t *testing.T, a *Accumulator, want []int64, what string) {
	t.Helper()
	if got := a.sums(); !slices.Equal(got, want) || !canonical(a.lo, a.hi) {
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("%s: sum[%d]=%d, want %d", what, i, got[i], want[i])
		}
		t.Fatalf("%s: the sums are right but their halves are not canonical", what)
	}
}

// checkMean fails unless a's Mean is, bit for bit, float32(sum·inv) of the
// sums want.
func checkMean(t *testing.T, a *Accumulator, want []int64, what string) {
	t.Helper()
	mean := make([]float32, a.Len())
	if err := a.Mean(mean); err != nil {
		t.Fatal(err)
	}
	inv := 1 / (a.scale * float64(a.Weight()))
	for i, s := range want {
		if w := float32(float64(s) * inv); math.Float32bits(mean[i]) != math.Float32bits(w) {
			t.Fatalf("%s: mean[%d]=%v, want %v", what, i, mean[i], w)
		}
	}
}
