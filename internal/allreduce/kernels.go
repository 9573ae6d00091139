package allreduce

import "math"

// The fold kernels turn weight·value into fixed point and add it to the
// sum. Every implementation computes, for each element,
//
//	sum[i] += RoundToEven(float64(x[i]) · f)
//
// where f = weight·2^frac. The product is exact (x has a 24-bit significand
// and weight < 2^29, so it fits float64's 53 bits), and the rounding uses the
// "magic number" conversion: for |v| ≤ 2^51, v + 1.5·2^52 lands in
// [2^52, 2^53] where float64 values are exactly the integers, so the
// addition rounds v to the nearest integer (ties to even) and the low bits
// of the result, minus those of 1.5·2^52, are that integer. NewAccumulator
// picks frac so that |v| ≤ 2^51 for every accepted value and weight. The
// AVX2 kernel (kernels_amd64.s) performs the same IEEE operations in the
// same order, so both give bit-identical sums.

// magic is 1.5·2^52, the float64 whose addition rounds to an integer.
const magic = 0x1.8p52

// magicBits is the bit pattern of magic.
const magicBits = 0x4338000000000000

// maxAbsBits is the bit pattern of float32(MaxAbs). A float32's magnitude
// bits order like its magnitude; NaN and ±Inf sort above every finite value.
const maxAbsBits = 0x46800000

// foldGeneric adds RoundToEven(x[i]·f) to s[i]; len(s) ≥ len(x).
func foldGeneric(s []int64, x []float32, f float64) {
	s = s[:len(x)]
	for i, v := range x {
		// The explicit conversion rounds the product on its own, so the
		// compiler may not fuse it with the addition into an FMA.
		p := float64(float64(v) * f)
		s[i] += int64(math.Float64bits(p+magic)) - magicBits
	}
}

// checkBlock is the number of values the checked fold range-checks before
// it folds them. Every implementation checks the same blocks, the first
// starting at index 0, so they stop at the same place; the AVX2 kernel folds
// one block per loop iteration.
const checkBlock = 32

// foldCheckedGeneric folds x into s as foldGeneric does, one block of
// checkBlock values at a time, each checked as by inRangeGeneric before it is
// folded. At the first block holding a NaN, an infinity or a value beyond
// ±MaxAbs it stops, without folding anything of that block, and returns the
// index where the block starts; it returns len(x) when it folded every value.
// Subtracting the fold of x[:k] with −f then restores s exactly.
func foldCheckedGeneric(s []int64, x []float32, f float64) int {
	s = s[:len(x)]
	for lo := 0; lo < len(x); lo += checkBlock {
		hi := min(lo+checkBlock, len(x))
		if !inRangeGeneric(x[lo:hi]) {
			return lo
		}
		foldGeneric(s[lo:hi], x[lo:hi], f)
	}
	return len(x)
}

// inRangeGeneric reports whether every value of x is finite and within
// ±MaxAbs.
func inRangeGeneric(x []float32) bool {
	bad := uint32(0)
	for _, v := range x {
		// 1 when the magnitude exceeds MaxAbs or is NaN/Inf, else 0;
		// branch-free so the loop runs at memory speed.
		bad |= (maxAbsBits - math.Float32bits(v)&0x7fffffff) >> 31
	}
	return bad == 0
}

// scaleMeanGeneric sets dst[i] = float32(float64(s[i]) · inv); len(s) ≥
// len(dst). The AVX2 kernel converts the int64 sums with the magic number
// the other way round — float64 bits(1.5·2^52) + s, minus 1.5·2^52 — which
// is exact for |s| ≤ 2^51, the bound NewAccumulator's scale rule keeps every
// sum within; the multiplication and the rounding to float32 are then the
// same operations.
func scaleMeanGeneric(dst []float32, s []int64, inv float64) {
	s = s[:len(dst)]
	for i, v := range s {
		dst[i] = float32(float64(v) * inv)
	}
}
