//go:build !openblas

package model

import (
	"math"

	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
)

// Backend names the BLAS library compiled into the package: "gonum" for
// gonum's pure-Go implementation (the default build, which needs no cgo) or
// "openblas" for OpenBLAS through cgo (build tag openblas).
const Backend = "gonum"

// sparseInputMax is the largest fraction of non-zero inputs at which the
// first layer takes the sparse path rather than gemm. With gonum the sparse
// kernel is never slower than gemm (gonum's gemm is built from the same kind
// of row updates and has no blocking to lose), so the first layer is always
// sparse.
const sparseInputMax = 1.0

// ownKernelsMaxRows is the largest batch for which layers after the first
// use the package's own kernels (dots forward, accSegs over the non-zero
// deltas backward) instead of gemm. With gonum that is every batch: the
// kernels perform gonum's operations for the backward products, use AVX2
// rather than SSE, keep outputs in registers and skip ReLU zeros.
const ownKernelsMaxRows = math.MaxInt

// maxBatchExact reports whether results are bit for bit independent of
// how rows are grouped into gemm calls, and so of MaxBatch. gonum's gemm
// adds the products for each output element one row at a time, in order,
// whatever the matrix sizes, so they are.
const maxBatchExact = true

// Tile limits for the gonum backend. gonum's Gemm switches to a goroutine
// pool, which allocates on every call, once C spans four or more 64×64
// blocks. Issuing the product as tiles of at most tileRows×tileCols (one
// block by three) keeps every call on gonum's serial path: no goroutines and
// no allocation, which is what a trainer running B=10 minibatches wants.
// Tiles are split evenly (784 columns become 5×157, not 4×192 + 16) so no
// call is left with a short, overhead-dominated tail.
const (
	tileRows = 64
	tileCols = 192
)

// tile returns the tile length for splitting n into the fewest pieces of at
// most limit, as evenly as possible.
func tile(n, limit int) int {
	if n <= limit {
		return max(n, 1)
	}
	pieces := (n + limit - 1) / limit
	return (n + pieces - 1) / pieces
}

// sgemm is gemm for float32 through blas32, tiled to stay serial.
func sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	impl := blas32.Implementation()
	tA, tB := trans(transA), trans(transB)
	tm, tn := tile(m, tileRows), tile(n, tileCols)
	for i0 := 0; i0 < m; i0 += tm {
		mi := min(tm, m-i0)
		aOff := i0 * lda // rows of A
		if transA {
			aOff = i0 // columns of Aᵀ
		}
		for j0 := 0; j0 < n; j0 += tn {
			nj := min(tn, n-j0)
			bOff := j0 // columns of B
			if transB {
				bOff = j0 * ldb // rows of Bᵀ
			}
			impl.Sgemm(tA, tB, mi, nj, k, alpha, a[aOff:], lda, b[bOff:], ldb, beta, c[i0*ldc+j0:], ldc)
		}
	}
}

// dgemm is gemm for float64 through blas64, tiled to stay serial.
func dgemm(transA, transB bool, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	impl := blas64.Implementation()
	tA, tB := trans(transA), trans(transB)
	tm, tn := tile(m, tileRows), tile(n, tileCols)
	for i0 := 0; i0 < m; i0 += tm {
		mi := min(tm, m-i0)
		aOff := i0 * lda
		if transA {
			aOff = i0
		}
		for j0 := 0; j0 < n; j0 += tn {
			nj := min(tn, n-j0)
			bOff := j0
			if transB {
				bOff = j0 * ldb
			}
			impl.Dgemm(tA, tB, mi, nj, k, alpha, a[aOff:], lda, b[bOff:], ldb, beta, c[i0*ldc+j0:], ldc)
		}
	}
}
