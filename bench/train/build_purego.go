//go:build purego

package main

// buildName labels the results: with -tags purego, internal/model uses its
// portable Go kernels only (no assembly of ours; gonum's BLAS as compiled).
const buildName = "purego"
