package model

import "gonum.org/v1/gonum/blas"

// This file and the two backend files next to it are the package's only
// contact with BLAS. Everything else calls gemm. Which library serves gemm
// is chosen at build time:
//
//   - blas_gonum.go (the default, no build tag): gonum's pure-Go BLAS, so
//     the package builds with CGO_ENABLED=0;
//   - blas_openblas.go (build tag openblas): OpenBLAS through cgo and
//     gonum.org/v1/netlib, pinned to one thread.
//
// Each backend file defines sgemm, dgemm, Backend and sparseInputMax;
// they share trans, below.
//
// The first layer's sparse kernel (sparse.go) does not go through BLAS: it
// is the same code in both builds.

// trans is the BLAS flag for a transposed (t) or plain operand.
func trans(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// Float is the set of element types the numeric core is instantiated for:
// float32 for training, float64 for gradient checking.
type Float interface {
	float32 | float64
}

// gemm computes C = alpha*op(A)*op(B) + beta*C with op(X) = Xᵀ when the
// corresponding trans flag is set, where op(A) is m×k, op(B) is k×n and C is
// m×n, all row-major with the given leading dimensions. It dispatches on the
// element type to sgemm or dgemm.
func gemm[T Float](transA, transB bool, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	switch cc := any(c).(type) {
	case []float32:
		sgemm(transA, transB, m, n, k, float32(alpha), any(a).([]float32), lda, any(b).([]float32), ldb, float32(beta), cc, ldc)
	case []float64:
		dgemm(transA, transB, m, n, k, float64(alpha), any(a).([]float64), lda, any(b).([]float64), ldb, float64(beta), cc, ldc)
	}
}
