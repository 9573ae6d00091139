//go:build !purego

package main

import "fedgather/internal/model"

// buildName labels the results: the BLAS backend compiled in.
const buildName = model.Backend
