//go:build amd64 && !purego

package allreduce

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAVX2KernelsMatchGeneric checks that the assembly kernels give the
// same sums, bit for bit, and the same verdicts as the portable ones.
func TestAVX2KernelsMatchGeneric(t *testing.T) {
	if !useAVX2 {
		t.Skip("this CPU has no AVX2; the generic kernels are in use")
	}
	r := rand.New(rand.NewPCG(3, 4))
	specials := []float32{0, float32(math.Copysign(0, -1)), MaxAbs, -MaxAbs, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32,
		math.Nextafter32(MaxAbs, 0), 0.5, -0.5, 1.5, -2.5, 1e-30, -1e-30, 3.0517578e-05}
	value := func() float32 {
		switch r.IntN(4) {
		case 0:
			return specials[r.IntN(len(specials))]
		case 1:
			return float32(r.NormFloat64() * 1e-3)
		case 2:
			return float32((r.Float64()*2 - 1) * MaxAbs)
		}
		return math.Float32frombits(r.Uint32() & 0x3fffffff) // random bits: any magnitude below 2, subnormals included
	}
	for trial := 0; trial < 200; trial++ {
		n := avx2Block * (1 + r.IntN(20))
		x := make([]float32, n)
		for i := range x {
			x[i] = value()
			if r.IntN(2) == 0 {
				x[i] = -x[i]
			}
		}
		maxWeight := int64(1 + r.IntN(1<<r.IntN(30)))
		a, err := NewAccumulator(n, maxWeight)
		if err != nil {
			t.Fatal(err)
		}
		w := 1 + r.Int64N(maxWeight)
		f := float64(w) * a.scale
		if r.IntN(2) == 0 {
			f = -f
		}
		want := make([]int64, n)
		for i := range want {
			want[i] = r.Int64N(1<<52) - 1<<51
		}
		got := slices.Clone(want)
		foldGeneric(want, x, f)
		foldAVX2(&got[0], &x[0], n, f)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("trial %d: x[%d]=%v (bits %#x) f=%v: avx2 %d, generic %d", trial, i, x[i], math.Float32bits(x[i]), f, got[i], want[i])
			}
		}
		if got, want := inRangeAVX2(&x[0], n), inRangeGeneric(x); got != want {
			t.Fatalf("trial %d: inRange avx2 %v, generic %v", trial, got, want)
		}
		// The checked fold, on the same values with bad ones planted in
		// half the trials: the same stopping block and the same sums.
		if trial%2 == 1 {
			for range 1 + r.IntN(3) {
				x[r.IntN(n)] = badValues[r.IntN(len(badValues))]
			}
		}
		got = slices.Clone(want)
		kw := foldCheckedGeneric(want, x, f)
		kg := foldCheckedAVX2(&got[0], &x[0], n, f)
		if kg != kw || !slices.Equal(got, want) {
			t.Fatalf("trial %d: checked fold stopped at %d (avx2), %d (generic), sums equal: %v", trial, kg, kw, slices.Equal(got, want))
		}
	}
}

// TestAVX2RangeCheckFindsEveryBadValue puts one bad value at every position
// of four blocks and checks that the assembly range check reports it and
// that the checked fold stops at its block without writing anything of it.
func TestAVX2RangeCheckFindsEveryBadValue(t *testing.T) {
	if !useAVX2 {
		t.Skip("this CPU has no AVX2; the generic kernels are in use")
	}
	bad := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.Nextafter32(MaxAbs, math.MaxFloat32), -math.Nextafter32(MaxAbs, math.MaxFloat32), 1e9,
		math.Float32frombits(0xffc00001), math.Float32frombits(0x7f800001)}
	const n = 4 * avx2Block
	x := make([]float32, n)
	for i := range x {
		x[i] = MaxAbs
		if i%2 == 1 {
			x[i] = -MaxAbs
		}
	}
	if !inRangeAVX2(&x[0], n) {
		t.Fatal("±MaxAbs reported out of range")
	}
	sum := make([]int64, n)
	if k := foldCheckedAVX2(&sum[0], &x[0], n, 1); k != n {
		t.Fatalf("±MaxAbs stopped the checked fold at %d", k)
	}
	for i := range x {
		for _, b := range bad {
			old := x[i]
			x[i] = b
			if inRangeAVX2(&x[0], n) || inRangeGeneric(x) {
				t.Fatalf("%v at %d not reported (avx2 %v, generic %v)", b, i, inRangeAVX2(&x[0], n), inRangeGeneric(x))
			}
			clear(sum)
			if k := foldCheckedAVX2(&sum[0], &x[0], n, 1); k != i&^(avx2Block-1) {
				t.Fatalf("%v at %d: checked fold stopped at %d, want %d", b, i, k, i&^(avx2Block-1))
			}
			for j, v := range sum[i&^(avx2Block-1):] {
				if v != 0 {
					t.Fatalf("%v at %d: the checked fold wrote sum[%d] at or after the bad block", b, i, i&^(avx2Block-1)+j)
				}
			}
			x[i] = old
		}
	}
}

// TestAVX2MeanMatchesGeneric checks the assembly mean against the portable
// one, bit for bit, for sums across the whole range the scale rule allows.
func TestAVX2MeanMatchesGeneric(t *testing.T) {
	if !useAVX2 {
		t.Skip("this CPU has no AVX2; the generic kernels are in use")
	}
	r := rand.New(rand.NewPCG(9, 10))
	for trial := 0; trial < 200; trial++ {
		n := avx2Block * (1 + r.IntN(20))
		s := make([]int64, n)
		for i := range s {
			switch r.IntN(4) {
			case 0:
				s[i] = []int64{0, 1, -1, 1 << 51, -(1 << 51), 1<<51 - 1, -(1<<51 - 1), 1 << 50, 3}[r.IntN(9)]
			case 1:
				s[i] = r.Int64N(1<<20) - 1<<19
			default:
				s[i] = r.Int64N(1<<52+1) - 1<<51
			}
		}
		inv := 1 / (math.Ldexp(1, 8+r.IntN(30)) * float64(1+r.IntN(1<<20)))
		want := make([]float32, n)
		got := make([]float32, n)
		scaleMeanGeneric(want, s, inv)
		scaleMeanAVX2(&got[0], &s[0], n, inv)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("trial %d: sum[%d]=%d inv=%v: avx2 %v, generic %v", trial, i, s[i], inv, got[i], want[i])
			}
		}
	}
}
