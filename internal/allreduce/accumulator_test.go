package allreduce

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func randomUpdates(r *rand.Rand, m, n int) ([][]float32, []int64) {
	us := make([][]float32, m)
	ws := make([]int64, m)
	for k := range us {
		us[k] = make([]float32, n)
		for i := range us[k] {
			us[k][i] = float32(r.NormFloat64() * 0.05)
		}
		ws[k] = int64(300 + r.IntN(600))
	}
	return us, ws
}

func TestMeanIsOrderIndependentAndExact(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const m, n = 10, 5000
	us, ws := randomUpdates(r, m, n)
	var total int64
	for _, w := range ws {
		total += w
	}
	var first []float32
	for trial := 0; trial < 20; trial++ {
		a, err := NewAccumulator(n, total)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range r.Perm(m) {
			if err := a.Add(us[k], ws[k]); err != nil {
				t.Fatal(err)
			}
		}
		mean := make([]float32, n)
		if err := a.Mean(mean); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = mean
			// Compare with a float64 reference.
			for i := range mean {
				var s float64
				for k := range us {
					s += float64(ws[k]) * float64(us[k][i])
				}
				want := s / float64(total)
				if d := math.Abs(float64(mean[i]) - want); d > 1e-7+1e-6*math.Abs(want) {
					t.Fatalf("mean[%d]=%v, float64 reference %v", i, mean[i], want)
				}
			}
			continue
		}
		for i := range mean {
			if math.Float32bits(mean[i]) != math.Float32bits(first[i]) {
				t.Fatalf("trial %d: mean[%d]=%v differs from first order's %v", trial, i, mean[i], first[i])
			}
		}
	}
}

func TestAddRejectsBadUpdates(t *testing.T) {
	a, err := NewAccumulator(4, 1000)
	if err != nil {
		t.Fatal(err)
	}
	good := []float32{1, 2, 3, 4}
	if err := a.Add(good, 100); err != nil {
		t.Fatal(err)
	}
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		name   string
		update []float32
		weight int64
		want   string
	}{
		{"short", []float32{1, 2, 3}, 10, "update has 3 values, the model has 4"},
		{"nan", []float32{1, nan, 3, 4}, 10, "update value 1 is NaN"},
		{"inf", []float32{1, 2, inf, 4}, 10, "update value 2 is +Inf"},
		{"huge", []float32{1, 2, 3, 1e9}, 10, "update value 3 is 1e+09"},
		{"zero weight", good, 0, "want a positive sample count"},
		{"over total", good, 901, "above the 1000 announced"},
	} {
		err := a.Add(tc.update, tc.weight)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	if a.Count() != 1 || a.Weight() != 100 {
		t.Fatalf("rejected updates changed the accumulator: count %d weight %d", a.Count(), a.Weight())
	}
	mean := make([]float32, 4)
	if err := a.Mean(mean); err != nil {
		t.Fatal(err)
	}
	for i := range mean {
		if mean[i] != good[i] {
			t.Fatalf("mean %v after rejected updates, want %v", mean, good)
		}
	}
}

// TestGatherMemoryIsOneModel shows that folding K updates needs no memory
// beyond the accumulator's one model-sized buffer, whether a round has 10 or
// 1,000 updates.
func TestGatherMemoryIsOneModel(t *testing.T) {
	const n = 199210 // the 2NN
	update := make([]float32, n)
	for i := range update {
		update[i] = float32(i%7) * 0.01
	}
	for _, m := range []int{10, 100, 1000} {
		a, err := NewAccumulator(n, int64(m)*600)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for k := 0; k < m; k++ {
			if err := a.Add(update, 600); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		// Folding allocates nothing; the bound leaves room for the runtime's
		// own background allocations (the race detector makes a few KB),
		// and is far below even one extra model (796,840 bytes).
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<10 {
			t.Errorf("%d updates allocated %d bytes while gathering; want no growth with the number of updates", m, grown)
		}
		if a.Bytes() != 8*n {
			t.Errorf("accumulator holds %d bytes, want one model of %d 64-bit sums = %d", a.Bytes(), n, 8*n)
		}
		t.Logf("%d updates folded; accumulator %d bytes; allocated while gathering: %d bytes", m, a.Bytes(), after.TotalAlloc-before.TotalAlloc)
	}
}

func TestServerOptimizers(t *testing.T) {
	p := []float32{1, 1}
	d := []float32{0.5, -1}
	avg, _ := NewServerOptimizer("avg", 1, 0, 2)
	avg.Step(p, d)
	if p[0] != 1.5 || p[1] != 0 {
		t.Fatalf("avg step gave %v", p)
	}
	m, err := NewServerOptimizer("avgm", 1, 0.5, 2)
	if err != nil {
		t.Fatal(err)
	}
	p = []float32{0, 0}
	m.Step(p, d)
	m.Step(p, d)
	// v1 = d, v2 = 0.5d + d = 1.5d; p = 2.5d
	if p[0] != 1.25 || p[1] != -2.5 {
		t.Fatalf("avgm steps gave %v", p)
	}
	m2, _ := NewServerOptimizer("avgm", 1, 0.5, 2)
	if err := m2.SetState(m.State()); err != nil {
		t.Fatal(err)
	}
	if err := m2.SetState([]byte{1}); err == nil {
		t.Fatal("short state accepted")
	}
	for _, bad := range []string{"adam", ""} {
		if _, err := NewServerOptimizer(bad, 1, 0, 2); err == nil {
			t.Errorf("optimiser %q accepted", bad)
		}
	}
	if _, err := NewServerOptimizer("avg", math.NaN(), 0, 2); err == nil {
		t.Error("NaN learning rate accepted")
	}
}

// TestFoldRoundsToNearestEven checks the portable kernel against
// math.RoundToEven of the exact product, ties included.
func TestFoldRoundsToNearestEven(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	xs := []float32{0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.25, 3.75, MaxAbs, -MaxAbs, 1e-30, math.SmallestNonzeroFloat32}
	fs := []float64{1, 2, 0x1p51 / MaxAbs, -1, 0x1p-3}
	for range 1000 {
		xs = append(xs, float32(r.NormFloat64()))
		fs = append(fs, math.Ldexp(float64(1+r.IntN(1<<20)), r.IntN(30)))
	}
	for k, f := range fs {
		x := xs[k%len(xs)]
		if math.Abs(float64(x)*f) > 0x1p51 {
			continue
		}
		for _, start := range []int64{7, 1<<31 - 3, -1 << 31, 5<<32 - 1, -(1 << 50)} {
			lo, hi := splitSums([]int64{start})
			foldGeneric(lo, hi, []float32{x}, f)
			want := start + int64(math.RoundToEven(float64(x)*f))
			if got := joinSums(lo, hi)[0]; got != want || !canonical(lo, hi) {
				t.Fatalf("fold of %v·%v into %d gave %d (halves %d, %d), want %d", x, f, start, got-start, lo[0], hi[0], want-start)
			}
		}
	}
}

// TestScaleAtTheEdges checks the fixed-point scale rule: one update of
// ±MaxAbs carrying the whole announced weight reaches at most 2^51 in fixed
// point, folds exactly, and averages back to ±MaxAbs; weights past
// MaxTotalWeight are refused.
func TestScaleAtTheEdges(t *testing.T) {
	for _, w := range []int64{1, 2, 3, 600, 6000, 60000, 1<<20 - 1, 1 << 20, 1<<20 + 1, MaxTotalWeight - 1, MaxTotalWeight} {
		a, err := NewAccumulator(2*foldChunk+3, w)
		if err != nil {
			t.Fatalf("weight %d: %v", w, err)
		}
		frac := int(math.Log2(a.scale))
		if wantFrac := 51 - int(math.Ceil(math.Log2(float64(MaxAbs)*float64(w)))); frac != wantFrac {
			t.Fatalf("weight %d: frac %d, want 51-ceil(log2(MaxAbs*w)) = %d", w, frac, wantFrac)
		}
		if frac < 8 || frac > 37 {
			t.Fatalf("weight %d: frac %d outside [8, 37]", w, frac)
		}
		top := float64(MaxAbs) * float64(w) * a.scale
		if top > 0x1p51 || top <= 0x1p50 {
			t.Fatalf("weight %d: largest term %g, want in (2^50, 2^51]", w, top)
		}
		u := make([]float32, a.Len())
		for i := range u {
			u[i] = MaxAbs
			if i%3 == 1 {
				u[i] = -MaxAbs
			} else if i%3 == 2 {
				u[i] = 0x1p-20
			}
		}
		if err := a.Add(u, w); err != nil {
			t.Fatalf("weight %d: %v", w, err)
		}
		sum := a.sums()
		for i, x := range u {
			if want := int64(math.RoundToEven(float64(x) * float64(w) * a.scale)); sum[i] != want {
				t.Fatalf("weight %d: sum[%d]=%d, want %d", w, i, sum[i], want)
			}
		}
		mean := make([]float32, a.Len())
		if err := a.Mean(mean); err != nil {
			t.Fatal(err)
		}
		for i := range mean {
			// ±MaxAbs is exact in fixed point; 2^-20 is rounded to the
			// resolution, within the documented 2^-37 for one update.
			if d := math.Abs(float64(mean[i]) - float64(u[i])); d > 0 && (u[i] != 0x1p-20 || d > 0x1p-37) {
				t.Fatalf("weight %d: mean[%d]=%v, want %v", w, i, mean[i], u[i])
			}
		}
	}
	if _, err := NewAccumulator(10, MaxTotalWeight+1); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("weight MaxTotalWeight+1: error %v, want too large", err)
	}
}

// TestRejectedUpdateLeavesSumUnchanged puts a bad value at every class of
// position of an update (every lane of a block, around chunk boundaries, in
// the tail; the fold rolls back the values it already added) and checks the
// error names it and the sum is bit-identical to before.
func TestRejectedUpdateLeavesSumUnchanged(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const n = 3*foldChunk + 45
	us, ws := randomUpdates(r, 3, n)
	a, err := NewAccumulator(n, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 2 {
		if err := a.Add(us[k], ws[k]); err != nil {
			t.Fatal(err)
		}
	}
	lo, hi := slices.Clone(a.lo), slices.Clone(a.hi)
	for _, pos := range badPositions(r, n) {
		for _, bad := range badValues {
			u := slices.Clone(us[2])
			u[pos] = bad
			err := a.Add(u, ws[2])
			if err == nil || !strings.Contains(err.Error(), "update value "+strconv.Itoa(pos)+" is") {
				t.Fatalf("bad value %v at %d: error %v", bad, pos, err)
			}
			if !slices.Equal(a.lo, lo) || !slices.Equal(a.hi, hi) || a.Count() != 2 || a.Weight() != ws[0]+ws[1] {
				t.Fatalf("bad value %v at %d changed the accumulator", bad, pos)
			}
		}
	}
}

// TestResetForIsANewAccumulator reuses one accumulator across rounds of
// different total weights and checks each round's mean is bit-identical to
// a fresh accumulator's, whether the round ended with Mean (ResetFor then
// clears the sum) or with MeanAndReset (which leaves it empty).
func TestResetForIsANewAccumulator(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	const n = 3*foldChunk + 5
	reused, err := NewAccumulator(n, 1)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 4 {
		us, ws := randomUpdates(r, 3+round, n)
		var total int64
		for _, w := range ws {
			total += w
		}
		total += int64(round) * 1000 // announced totals need not be reached
		fresh, err := NewAccumulator(n, total)
		if err != nil {
			t.Fatal(err)
		}
		if err := reused.ResetFor(total); err != nil {
			t.Fatal(err)
		}
		for k := range us {
			if err := fresh.Add(us[k], ws[k]); err != nil {
				t.Fatal(err)
			}
			if err := reused.Add(us[k], ws[k]); err != nil {
				t.Fatal(err)
			}
		}
		a, b := make([]float32, n), make([]float32, n)
		if err := fresh.Mean(a); err != nil {
			t.Fatal(err)
		}
		take := reused.Mean
		if round%2 == 0 {
			take = reused.MeanAndReset
		}
		if err := take(b); err != nil {
			t.Fatal(err)
		}
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("round %d: mean[%d] %v after ResetFor, %v fresh", round, i, b[i], a[i])
			}
		}
		if round%2 == 0 {
			if reused.Count() != 0 || reused.Weight() != 0 || slices.ContainsFunc(reused.lo, nonZero) || slices.ContainsFunc(reused.hi, nonZero) {
				t.Fatalf("round %d: MeanAndReset left %d updates of weight %d, or a non-zero sum", round, reused.Count(), reused.Weight())
			}
			if err := reused.MeanAndReset(b); err == nil {
				t.Fatalf("round %d: MeanAndReset of the emptied accumulator did not fail", round)
			}
			// A refused update leaves the emptied accumulator empty.
			bad := slices.Clone(us[0])
			bad[n-1] = float32(math.NaN())
			if err := reused.Add(bad, ws[0]); err == nil || reused.Count() != 0 || slices.ContainsFunc(reused.lo, nonZero) || slices.ContainsFunc(reused.hi, nonZero) {
				t.Fatalf("round %d: a NaN update after MeanAndReset: error %v, %d updates, or a non-zero sum", round, err, reused.Count())
			}
		}
	}
	// Whatever the last round ended with, hold an update: a ResetFor that
	// fails must keep it.
	if err := reused.ResetFor(1000); err != nil {
		t.Fatal(err)
	}
	one := make([]float32, n)
	one[0] = 1
	if err := reused.Add(one, 3); err != nil {
		t.Fatal(err)
	}
	lo, hi := slices.Clone(reused.lo), slices.Clone(reused.hi)
	if err := reused.ResetFor(MaxTotalWeight + 1); err == nil || !slices.Equal(reused.lo, lo) || !slices.Equal(reused.hi, hi) || reused.Count() == 0 {
		t.Fatalf("ResetFor(MaxTotalWeight+1): error %v; the accumulator must be left unchanged", err)
	}
}

func BenchmarkAccumulate(b *testing.B) {
	for _, n := range []int{199210, 16 << 20} {
		u := make([]float32, n)
		for i := range u {
			u[i] = float32(i%13) * 0.001
		}
		a, _ := NewAccumulator(n, 1<<40/MaxAbs)
		b.Run(Kernel()+"/"+sizeName(4*n), func(b *testing.B) {
			b.SetBytes(int64(4 * n))
			for i := 0; i < b.N; i++ {
				if a.Count() > 1000 {
					a.Reset()
				}
				_ = a.Add(u, 1)
			}
		})
	}
}

func sizeName(bytes int) string {
	if bytes >= 1<<20 {
		return strconv.Itoa(bytes>>20) + "MiB"
	}
	return strconv.Itoa(bytes>>10) + "KiB"
}

// BenchmarkCopy is the yardstick for BenchmarkAccumulate: copying the same
// bytes.
func BenchmarkCopy(b *testing.B) {
	for _, n := range []int{199210, 16 << 20} {
		u := make([]float32, n)
		dst := make([]float32, n)
		b.Run(sizeName(4*n), func(b *testing.B) {
			b.SetBytes(int64(4 * n))
			for i := 0; i < b.N; i++ {
				copy(dst, u)
			}
		})
	}
}

func nonZero(v int32) bool { return v != 0 }

func BenchmarkMean(b *testing.B) {
	const n = 199210
	a, _ := NewAccumulator(n, 600)
	u := make([]float32, n)
	for i := range u {
		u[i] = float32(i%13) * 0.001
	}
	_ = a.Add(u, 600)
	dst := make([]float32, n)
	b.SetBytes(8 * n)
	for i := 0; i < b.N; i++ {
		_ = a.Mean(dst)
	}
}

// BenchmarkRound is one round of one 2NN-sized update, as the hub runs it:
// ResetFor, Add, then the mean, taken with Mean (ResetFor then clears the
// sum) or with MeanAndReset (which clears it as it reads it).
func BenchmarkRound(b *testing.B) {
	const n = 199210
	u := make([]float32, n)
	for i := range u {
		u[i] = float32(i%13) * 0.001
	}
	dst := make([]float32, n)
	for _, c := range []struct {
		name string
		take func(*Accumulator, []float32) error
	}{{"Mean", (*Accumulator).Mean}, {"MeanAndReset", (*Accumulator).MeanAndReset}} {
		b.Run(c.name, func(b *testing.B) {
			a, _ := NewAccumulator(n, 600)
			for b.Loop() {
				_ = a.ResetFor(600)
				if err := a.Add(u, 600); err != nil {
					b.Fatal(err)
				}
				if err := c.take(a, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
