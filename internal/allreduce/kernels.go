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
// same order, except that it fuses the multiplication and the addition of
// 1.5·2^52 into one FMA: that rounds once instead of twice, which gives the
// same result because the product is exact. Both give bit-identical sums.
//
// The sum is held in two planes of signed 32-bit integers, a carry-save
// split of the int64:
//
//	sum[i] = hi[i]·2^32 + lo[i],  lo[i] = int32(sum[i])
//
// so (lo[i], hi[i]) is a function of sum[i]: every kernel leaves the same
// bits in both planes, and folding the same values with −f restores them
// exactly. A term t is added to lo modulo 2^32, and hi takes the carry,
// floor((lo[i] + t + 2^31) / 2^32), which is zero unless lo leaves
// [−2^31, 2^31). The fold's memory traffic is what the split is for: most
// terms are far smaller than 2^31 (a typical update value times the scale),
// so most folds read and write only lo, 4 bytes per value where an int64
// sum takes 8 each way. lo is signed because sums start at zero and wander
// around it; an unsigned lo would carry at every crossing of zero. |sum| ≤
// 2^51 (see NewAccumulator), so |hi| ≤ 2^19.

// magic is 1.5·2^52, the float64 whose addition rounds to an integer.
const magic = 0x1.8p52

// magicBits is the bit pattern of magic.
const magicBits = 0x4338000000000000

// maxAbsBits is the bit pattern of float32(MaxAbs). A float32's magnitude
// bits order like its magnitude; NaN and ±Inf sort above every finite value.
const maxAbsBits = 0x46800000

// foldGeneric adds RoundToEven(x[i]·f) to the sum held in lo[i] and hi[i];
// len(lo), len(hi) ≥ len(x).
func foldGeneric(lo, hi []int32, x []float32, f float64) {
	lo, hi = lo[:len(x)], hi[:len(x)]
	for i, v := range x {
		// The explicit conversion rounds the product on its own, so the
		// compiler may not fuse it with the addition into an FMA.
		p := float64(float64(v) * f)
		w := int64(lo[i]) + int64(math.Float64bits(p+magic)) - magicBits
		lo[i] = int32(w)
		// The carry is rare; skipping the store keeps hi out of the
		// cache.
		if c := (w + 1<<31) >> 32; c != 0 {
			hi[i] += int32(c)
		}
	}
}

// checkBlock is the number of values the checked fold range-checks before
// it folds them. Every implementation checks the same blocks, the first
// starting at index 0, so they stop at the same place; the AVX2 kernel folds
// one block per loop iteration.
const checkBlock = 32

// foldCheckedGeneric folds x into lo and hi as foldGeneric does, one block
// of checkBlock values at a time, each checked as by inRangeGeneric before
// it is folded. At the first block holding a NaN, an infinity or a value
// beyond ±MaxAbs it stops, without folding anything of that block, and
// returns the index where the block starts; it returns len(x) when it folded
// every value. Subtracting the fold of x[:k] with −f then restores lo and hi
// exactly.
func foldCheckedGeneric(lo, hi []int32, x []float32, f float64) int {
	lo, hi = lo[:len(x)], hi[:len(x)]
	for start := 0; start < len(x); start += checkBlock {
		end := min(start+checkBlock, len(x))
		if !inRangeGeneric(x[start:end]) {
			return start
		}
		foldGeneric(lo[start:end], hi[start:end], x[start:end], f)
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

// scaleMeanGeneric sets dst[i] = float32(float64(sum[i]) · inv), sum[i]
// being hi[i]·2^32 + lo[i]; len(lo), len(hi) ≥ len(dst). The AVX2 kernel
// converts the planes to float64 separately and adds float64(hi)·2^32 and
// float64(lo): both are exact, and so is their sum, an integer of magnitude
// at most 2^51 (NewAccumulator's bound); the multiplication and the rounding
// to float32 are then the same operations. With zero, each sum is set to
// zero once read.
func scaleMeanGeneric(dst []float32, lo, hi []int32, inv float64, zero bool) {
	lo, hi = lo[:len(dst)], hi[:len(dst)]
	for i := range dst {
		dst[i] = float32(float64(int64(hi[i])<<32+int64(lo[i])) * inv)
		if zero {
			lo[i], hi[i] = 0, 0
		}
	}
}
