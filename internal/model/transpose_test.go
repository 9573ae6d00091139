package model

import "testing"

// TestTranspose checks transpose against its definition for shapes with
// and without whole 8×8 tiles, 32×32 blocks and four-row groups: the
// float32 version (AVX2 on amd64) and the generic one, in float64.
func TestTranspose(t *testing.T) {
	for _, rc := range [][2]int{{200, 784}, {784, 200}, {10, 200}, {7, 5}, {33, 65}, {1, 9}, {9, 1}, {4, 4}, {8, 8}, {72, 40}, {40, 72}, {100, 3}, {3, 100}} {
		checkTranspose(t, rc[0], rc[1], transpose[float32])
		checkTranspose(t, rc[0], rc[1], transposeGo[float64])
	}
}

// checkTranspose also checks that f writes nothing around dst: dst lies
// between guard bands of 64 values, which must keep their value.
func checkTranspose[T Float](t *testing.T, rows, cols int, f func(dst, src []T, rows, cols int)) {
	t.Helper()
	const guard = 64
	src := make([]T, rows*cols)
	for i := range src {
		src[i] = T(i)
	}
	all := make([]T, guard+len(src)+guard)
	for i := range all {
		all[i] = -1
	}
	dst := all[guard : guard+len(src)]
	f(dst, src, rows, cols)
	for r := range rows {
		for c := range cols {
			if got, want := dst[c*rows+r], src[r*cols+c]; got != want {
				t.Fatalf("%T %d×%d: dst[%d][%d] = %v, want %v", src, rows, cols, c, r, got, want)
			}
		}
	}
	for i := range guard {
		if all[i] != -1 || all[guard+len(src)+i] != -1 {
			t.Fatalf("%T %d×%d: wrote outside dst", src, rows, cols)
		}
	}
}

// BenchmarkTranspose784x200 transposes the 2NN's first layer there and
// back, as SGD does once per call; BenchmarkTransposeGo784x200 does the
// same with the plain Go version, for comparison.
func BenchmarkTranspose784x200(b *testing.B) { benchTranspose(b, transpose[float32]) }

func BenchmarkTransposeGo784x200(b *testing.B) { benchTranspose(b, transposeGo[float32]) }

func benchTranspose(b *testing.B, transpose func(dst, src []float32, rows, cols int)) {
	src := make([]float32, 784*200)
	dst := make([]float32, 784*200)
	b.SetBytes(2 * 4 * 784 * 200)
	for b.Loop() {
		transpose(dst, src, 200, 784)
		transpose(src, dst, 784, 200)
	}
}
