//go:build !amd64 || purego

package allreduce

// Kernel names the fold implementation in use: "avx2" or "generic". It is
// for benchmarks and reports; both give bit-identical sums.
func Kernel() string { return "generic" }

func fold(s []int64, x []float32, f float64) { foldGeneric(s, x, f) }

func foldChecked(s []int64, x []float32, f float64) int { return foldCheckedGeneric(s, x, f) }

func inRange(x []float32) bool { return inRangeGeneric(x) }

func scaleMean(dst []float32, s []int64, inv float64) { scaleMeanGeneric(dst, s, inv) }
