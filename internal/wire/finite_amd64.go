//go:build amd64 && !purego

package wire

import "golang.org/x/sys/cpu"

// useAVX2 is fixed at start-up: golang.org/x/sys/cpu reports AVX2 only
// where the operating system saves YMM registers.
var useAVX2 = cpu.X86.HasAVX2

// allFiniteAVX2 reports whether none of the n values at p, n a positive
// multiple of 32, is NaN or infinite; in finite_amd64.s.
//
//go:noescape
func allFiniteAVX2(p *float32, n int) bool

// allFinite reports whether no value of v is NaN or infinite: AVX2 over
// blocks of 32 values where the CPU has it (several times allFiniteGo's
// speed: 32 values per four loads, ANDs and compares), allFiniteGo for the
// rest.
func allFinite(v []float32) bool {
	n := len(v) &^ 31
	if useAVX2 && n > 0 {
		if !allFiniteAVX2(&v[0], n) {
			return false
		}
		v = v[n:]
	}
	return allFiniteGo(v)
}
