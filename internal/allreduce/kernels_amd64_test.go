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
		// Sums anywhere in ±2^50, or near a carry between the halves.
		start := make([]int64, n)
		for i := range start {
			start[i] = r.Int64N(1<<51) - 1<<50
			if r.IntN(2) == 0 {
				start[i] = nearCarry(r)
			}
		}
		lo0, hi0 := splitSums(start)
		wlo, whi := slices.Clone(lo0), slices.Clone(hi0)
		lo, hi := slices.Clone(lo0), slices.Clone(hi0)
		foldGeneric(wlo, whi, x, f)
		foldAVX2(&lo[0], &hi[0], &x[0], n, f, fastBits(f))
		for i := range lo {
			if lo[i] != wlo[i] || hi[i] != whi[i] {
				t.Fatalf("trial %d: x[%d]=%v (bits %#x) f=%v: avx2 halves %d, %d, generic %d, %d", trial, i, x[i], math.Float32bits(x[i]), f, lo[i], hi[i], wlo[i], whi[i])
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
		lo, hi = slices.Clone(wlo), slices.Clone(whi)
		kw := foldCheckedGeneric(wlo, whi, x, f)
		kg := foldCheckedAVX2(&lo[0], &hi[0], &x[0], n, f, fastBits(f))
		equal := slices.Equal(lo, wlo) && slices.Equal(hi, whi)
		if kg != kw || !equal {
			t.Fatalf("trial %d: checked fold stopped at %d (avx2), %d (generic), sums equal: %v", trial, kg, kw, equal)
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
	lo, hi := make([]int32, n), make([]int32, n)
	if k := foldCheckedAVX2(&lo[0], &hi[0], &x[0], n, 1, fastBits(1)); k != n {
		t.Fatalf("±MaxAbs stopped the checked fold at %d", k)
	}
	for i := range x {
		for _, b := range bad {
			old := x[i]
			x[i] = b
			if inRangeAVX2(&x[0], n) || inRangeGeneric(x) {
				t.Fatalf("%v at %d not reported (avx2 %v, generic %v)", b, i, inRangeAVX2(&x[0], n), inRangeGeneric(x))
			}
			// Terms of 2^45 (f = 2^31) carry into hi: the slow path
			// must not write the bad block either.
			for _, f := range []float64{1, 0x1p31} {
				clear(lo)
				clear(hi)
				if k := foldCheckedAVX2(&lo[0], &hi[0], &x[0], n, f, fastBits(f)); k != i&^(avx2Block-1) {
					t.Fatalf("%v at %d: checked fold stopped at %d, want %d", b, i, k, i&^(avx2Block-1))
				}
				for j := i &^ (avx2Block - 1); j < n; j++ {
					if lo[j] != 0 || hi[j] != 0 {
						t.Fatalf("%v at %d, f=%v: the checked fold wrote sum[%d] at or after the bad block", b, i, f, j)
					}
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
				s[i] = []int64{0, 1, -1, 1 << 51, -(1 << 51), 1<<51 - 1, -(1<<51 - 1), 1 << 50, 3, 1<<31 - 1, -1 << 31, 1 << 31, -1<<31 - 1, 1 << 32, -1 << 32}[r.IntN(15)]
			case 1:
				s[i] = r.Int64N(1<<20) - 1<<19
			case 2:
				s[i] = nearCarry(r)
			default:
				s[i] = r.Int64N(1<<52+1) - 1<<51
			}
		}
		inv := 1 / (math.Ldexp(1, 8+r.IntN(30)) * float64(1+r.IntN(1<<20)))
		lo, hi := splitSums(s)
		want := make([]float32, n)
		got := make([]float32, n)
		scaleMeanGeneric(want, lo, hi, inv, false)
		scaleMeanAVX2(&got[0], &lo[0], &hi[0], n, inv, false)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("trial %d: sum[%d]=%d inv=%v: avx2 %v, generic %v", trial, i, s[i], inv, got[i], want[i])
			}
			if d := float32(float64(s[i]) * inv); math.Float32bits(want[i]) != math.Float32bits(d) {
				t.Fatalf("trial %d: sum[%d]=%d inv=%v: generic %v, want %v", trial, i, s[i], inv, want[i], d)
			}
		}
		// With zero, both kernels give the same means and leave every
		// sum zero, and nothing past n changes.
		zlo, zhi := append(slices.Clone(lo), 7), append(slices.Clone(hi), 7)
		clear(got)
		scaleMeanAVX2(&got[0], &zlo[0], &zhi[0], n, inv, true)
		glo, ghi := slices.Clone(lo), slices.Clone(hi)
		gwant := make([]float32, n)
		scaleMeanGeneric(gwant, glo, ghi, inv, true)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(gwant[i]) != math.Float32bits(want[i]) {
				t.Fatalf("trial %d: sum[%d]=%d inv=%v, zeroing: avx2 %v, generic %v, want %v", trial, i, s[i], inv, got[i], gwant[i], want[i])
			}
			if zlo[i] != 0 || zhi[i] != 0 || glo[i] != 0 || ghi[i] != 0 {
				t.Fatalf("trial %d: sum[%d] not zeroed: avx2 %d:%d, generic %d:%d", trial, i, zhi[i], zlo[i], ghi[i], glo[i])
			}
		}
		if zlo[n] != 7 || zhi[n] != 7 {
			t.Fatalf("trial %d: zeroing wrote past the %d sums", trial, n)
		}
	}
}

// TestFastLimit checks fastBits: the limit is the largest magnitude within
// MaxAbs whose terms stay below 2^31 − 1.
func TestFastLimit(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	fs := []float64{0, 1, -1, 0x1p17, 0x1p17 + 1, 0x1p18, 0x1p31 - 0.5, 0x1p31, 0x1p37, -0x1p37, 153600}
	for range 1000 {
		fs = append(fs, float64(1+r.IntN(1<<29))*math.Ldexp(1, r.IntN(40)-10))
	}
	for _, f := range fs {
		m := math.Float32frombits(fastBits(f))
		if !(m >= 0 && m <= MaxAbs) || math.Abs(float64(m)*f) >= 1<<31-1 {
			t.Fatalf("f=%v: fast limit %v out of [0, MaxAbs] or its term %v not below 2^31 − 1", f, m, float64(m)*f)
		}
		if next := math.Nextafter32(m, MaxAbs+1); m < MaxAbs && math.Abs(float64(next)*f) < 1<<31-1 {
			t.Fatalf("f=%v: fast limit %v is not the largest (%v is within)", f, m, next)
		}
	}
}
