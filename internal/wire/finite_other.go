//go:build !amd64 || purego

package wire

// allFinite reports whether no value of v is NaN or infinite.
func allFinite(v []float32) bool { return allFiniteGo(v) }
