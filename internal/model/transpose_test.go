package model

import "testing"

// TestTranspose checks transpose against its definition for shapes with
// and without whole blocks and four-row groups.
func TestTranspose(t *testing.T) {
	for _, rc := range [][2]int{{200, 784}, {784, 200}, {10, 200}, {7, 5}, {33, 65}, {1, 9}, {9, 1}, {4, 4}} {
		rows, cols := rc[0], rc[1]
		src := make([]float32, rows*cols)
		for i := range src {
			src[i] = float32(i)
		}
		dst := make([]float32, len(src))
		transpose(dst, src, rows, cols)
		for r := range rows {
			for c := range cols {
				if got, want := dst[c*rows+r], src[r*cols+c]; got != want {
					t.Fatalf("%d×%d: dst[%d][%d] = %v, want %v", rows, cols, c, r, got, want)
				}
			}
		}
	}
}

func BenchmarkTranspose784x200(b *testing.B) {
	src := make([]float32, 784*200)
	dst := make([]float32, 784*200)
	b.SetBytes(2 * 4 * 784 * 200)
	for b.Loop() {
		transpose(dst, src, 200, 784)
		transpose(src, dst, 784, 200)
	}
}
