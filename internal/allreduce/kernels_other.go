//go:build !amd64 || purego

package allreduce

// kernel names the fold implementation in use, for benchmarks and reports.
func kernel() string { return "generic" }

func fold(s []int64, x []float32, f float64) { foldGeneric(s, x, f) }

func inRange(x []float32) bool { return inRangeGeneric(x) }
