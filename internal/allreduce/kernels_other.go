//go:build !amd64 || purego

package allreduce

// Kernel names the fold implementation in use: "avx2" or "generic". It is
// for benchmarks and reports; both give bit-identical sums.
func Kernel() string { return "generic" }

func fold(lo, hi []int32, x []float32, f float64) { foldGeneric(lo, hi, x, f) }

func foldChecked(lo, hi []int32, x []float32, f float64) int {
	return foldCheckedGeneric(lo, hi, x, f)
}

func inRange(x []float32) bool { return inRangeGeneric(x) }

func scaleMean(dst []float32, lo, hi []int32, inv float64, zero bool) {
	scaleMeanGeneric(dst, lo, hi, inv, zero)
}
