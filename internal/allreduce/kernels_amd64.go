//go:build amd64 && !purego

package allreduce

// useAVX2 is fixed at start-up from the CPU's features (CPUID, and the
// operating system's support for saving YMM registers).
var useAVX2 = cpuHasAVX2()

// avx2Block is the number of elements the assembly kernels handle per loop
// iteration; the remainder goes to the generic kernels. It is also the
// checked fold's block (checkBlock).
const avx2Block = checkBlock

//go:noescape
func foldAVX2(sum *int64, x *float32, n int, f float64)

//go:noescape
func foldCheckedAVX2(sum *int64, x *float32, n int, f float64) int

//go:noescape
func inRangeAVX2(x *float32, n int) bool

//go:noescape
func scaleMeanAVX2(dst *float32, sum *int64, n int, inv float64)

func cpuHasAVX2() bool

// Kernel names the fold implementation in use: "avx2" or "generic". It is
// for benchmarks and reports; both give bit-identical sums.
func Kernel() string {
	if useAVX2 {
		return "avx2"
	}
	return "generic"
}

func fold(s []int64, x []float32, f float64) {
	n := len(x) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		s = s[:len(x)]
		foldAVX2(&s[0], &x[0], n, f)
		s, x = s[n:], x[n:]
	}
	foldGeneric(s, x, f)
}

// foldChecked is foldCheckedGeneric's checked fold: the AVX2 kernel takes the
// whole blocks, the generic one the remainder, a last block shorter than
// checkBlock that starts where it would in foldCheckedGeneric.
func foldChecked(s []int64, x []float32, f float64) int {
	n := len(x) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		s = s[:len(x)]
		if k := foldCheckedAVX2(&s[0], &x[0], n, f); k < n {
			return k
		}
		return n + foldCheckedGeneric(s[n:], x[n:], f)
	}
	return foldCheckedGeneric(s, x, f)
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

func scaleMean(dst []float32, s []int64, inv float64) {
	n := len(dst) &^ (avx2Block - 1)
	if useAVX2 && n > 0 {
		s = s[:len(dst)]
		scaleMeanAVX2(&dst[0], &s[0], n, inv)
		dst, s = dst[n:], s[n:]
	}
	scaleMeanGeneric(dst, s, inv)
}
