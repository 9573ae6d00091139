//go:build !amd64 || purego

package model

// accSegs32 is accSegs for float32, through gonum's Saxpy.
func accSegs32(out []float32, ldOut, n int, ends []int32, vals []float32, idx []int32, m []float32, ldM int) {
	accSegsSaxpy(out, ldOut, n, ends, vals, idx, m, ldM)
}

// compact32 is compact for float32; next (the row that will be compacted
// next) is a hint that this version ignores.
func compact32(idx []int32, val, src, next []float32, cnt []int32) int {
	return compactGo(idx, val, src, cnt)
}

// dots32 is dots for float32 (already checked), in plain Go.
func dots32(out, a, w []float32, ldw int) { dotsGo(out, a, w, ldw) }

// dots2x32 is dots2 for float32 (already checked): dots32 for each vector.
func dots2x32(out0, out1, a0, a1, w []float32, ldw int) {
	dots32(out0, a0, w, ldw)
	dots32(out1, a1, w, ldw)
}

// scatterSegs32 is scatterSegs for float32 (already checked), in plain Go.
func scatterSegs32(out []float32, ldOut, n int, ends []int32, vals []float32, alpha float32, idx []int32, src []float32, ldSrc int) {
	scatterSegsGo(out, ldOut, n, ends, vals, alpha, idx, src, ldSrc)
}

// transpose32 is transpose for float32, in plain Go.
func transpose32(dst, src []float32, rows, cols int) { transposeGo(dst, src, rows, cols) }
