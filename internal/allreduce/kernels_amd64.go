//go:build amd64 && !purego

package allreduce

import (
	"math"

	"golang.org/x/sys/cpu"
)

// useAVX2 is fixed at start-up from the CPU's features: AVX2 (which
// golang.org/x/sys/cpu reports only where the operating system saves YMM
// registers) and FMA.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// avx2Block is the number of elements the assembly kernels handle per loop
// iteration; the remainder goes to the generic kernels. It is also the
// checked fold's block (checkBlock).
const avx2Block = checkBlock

//go:noescape
func foldAVX2(lo, hi *int32, x *float32, n int, f float64, fast uint32)

//go:noescape
func foldCheckedAVX2(lo, hi *int32, x *float32, n int, f float64, fast uint32) int

//go:noescape
func inRangeAVX2(x *float32, n int) bool

//go:noescape
func scaleMeanAVX2(dst *float32, lo, hi *int32, n int, inv float64, zero bool)

// Kernel names the fold implementation in use: "avx2" or "generic". It is
// for benchmarks and reports; both give bit-identical sums.
func Kernel() string {
	if useAVX2 {
		return "avx2"
	}
	return "generic"
}

// fastBits returns the bits of the fast limit for a fold by f: the
// largest float32 magnitude m ≤ MaxAbs with |m·f| < 2^31 − 1. A block of
// values all within ±m has terms that fit in an int32, which the AVX2
// kernel's fast path needs (see TRY32 in kernels_amd64.s); a block with a
// larger value takes its exact 64-bit path. The float64 product m·f, even
// if it is rounded, is within 2^-22 of the exact one, so every term of a
// value within ±m is below 2^31 − 1/2 and rounds to at most 2^31 − 1.
func fastBits(f float64) uint32 {
	f = math.Abs(f)
	const limit = 1<<31 - 1
	if MaxAbs*f < limit {
		return maxAbsBits
	}
	m := float32(limit / f)
	for float64(m)*f >= limit {
		m = math.Nextafter32(m, 0)
	}
	return math.Float32bits(m)
}

func fold(lo, hi []int32, x []float32, f float64) {
	n := len(x) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		lo, hi = lo[:len(x)], hi[:len(x)]
		foldAVX2(&lo[0], &hi[0], &x[0], n, f, fastBits(f))
		lo, hi, x = lo[n:], hi[n:], x[n:]
	}
	foldGeneric(lo, hi, x, f)
}

// foldChecked is foldCheckedGeneric's checked fold: the AVX2 kernel takes the
// whole blocks, the generic one the remainder, a last block shorter than
// checkBlock that starts where it would in foldCheckedGeneric.
func foldChecked(lo, hi []int32, x []float32, f float64) int {
	n := len(x) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		lo, hi = lo[:len(x)], hi[:len(x)]
		if k := foldCheckedAVX2(&lo[0], &hi[0], &x[0], n, f, fastBits(f)); k < n {
			return k
		}
		return n + foldCheckedGeneric(lo[n:], hi[n:], x[n:], f)
	}
	return foldCheckedGeneric(lo, hi, x, f)
}

func inRange(x []float32) bool {
	n := len(x) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		if !inRangeAVX2(&x[0], n) {
			return false
		}
		x = x[n:]
	}
	return inRangeGeneric(x)
}

func scaleMean(dst []float32, lo, hi []int32, inv float64, zero bool) {
	n := len(dst) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		lo, hi = lo[:len(dst)], hi[:len(dst)]
		scaleMeanAVX2(&dst[0], &lo[0], &hi[0], n, inv, zero)
		dst, lo, hi = dst[n:], lo[n:], hi[n:]
	}
	scaleMeanGeneric(dst, lo, hi, inv, zero)
}
