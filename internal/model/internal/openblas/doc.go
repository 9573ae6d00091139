// Package openblas links OpenBLAS into the openblas build of package model
// and controls its thread count. It is a package of its own because a Go
// package that uses cgo cannot also hold Go assembly, which model does.
//
// Without the openblas build tag the package is empty.
package openblas
