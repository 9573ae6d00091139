//go:build openblas

package model

import (
	"gonum.org/v1/netlib/blas/netlib"

	"fedgather/internal/model/internal/openblas"
)

// Backend names the BLAS library compiled into the package: "gonum" for
// gonum's pure-Go implementation (the default build, which needs no cgo) or
// "openblas" for OpenBLAS through cgo (build tag openblas).
//
// The openblas build links -lopenblas (Debian: libopenblas-dev; see
// internal/openblas) and calls it through gonum.org/v1/netlib's cblas
// binding. Each trainer is meant to use
// one core, so package initialisation pins OpenBLAS to one thread with
// openblas_set_num_threads(1). Start processes with OPENBLAS_NUM_THREADS=1
// as well: OpenBLAS reads it when the library loads, before any Go code
// runs, and otherwise starts (idle) threads for every core.
const Backend = "openblas"

// sparseInputMax is the largest fraction of non-zero inputs at which the
// first layer takes the sparse path rather than gemm. OpenBLAS's gemm does
// several times more multiply-adds per second than the sparse kernel, so
// dense inputs go to gemm; MNIST (about 19% non-zero) stays sparse.
const sparseInputMax = 0.5

// ownKernelsMaxRows is the largest batch for which layers after the first
// use the package's own kernels (dots forward, accSegs over the non-zero
// deltas backward) instead of gemm. OpenBLAS's gemm has a fixed cost per
// call that small batches do not amortise: on MNIST's 2NN (one epoch, one
// thread) the own kernels were 18% faster at B=10 and gemm 11% faster at
// B=16 and 25% at B=32, hence the cut between the two.
const ownKernelsMaxRows = 12

// maxBatchExact reports whether results are bit for bit independent of
// how rows are grouped into gemm calls, and so of MaxBatch. OpenBLAS blocks
// and vectorises the sum over rows differently for different sizes, so a
// gradient accumulated over MaxBatch-row chunks depends, at the level of
// rounding, on MaxBatch. Minibatch SGD does not (its gemm calls always
// span one minibatch), and a fixed MaxBatch still gives bit-identical
// results run after run.
const maxBatchExact = false

func init() {
	openblas.SetNumThreads(1)
}

// sgemm is gemm for float32 through OpenBLAS's cblas_sgemm.
func sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	netlib.Implementation{}.Sgemm(trans(transA), trans(transB), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// dgemm is gemm for float64 through OpenBLAS's cblas_dgemm.
func dgemm(transA, transB bool, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	netlib.Implementation{}.Dgemm(trans(transA), trans(transB), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}
