//go:build amd64 && !purego

package model

import "golang.org/x/sys/cpu"

// useAVX2 reports whether the CPU and the operating system support AVX2
// (golang.org/x/sys/cpu reports AVX2 only where the operating system saves
// YMM registers) and POPCNT, which the assembly kernels need. It is decided
// once, at package initialisation.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasPOPCNT

// compactPerm[m] lists the lanes whose bit is set in the 8-bit mask m, in
// increasing order, padded with zeros: the permutation compactAVX2 applies
// to a block of eight values whose non-zero lanes are m. Read-only after
// initialisation.
var compactPerm = func() (t [256][8]uint8) {
	for m := range 256 {
		k := 0
		for lane := range 8 {
			if m>>lane&1 != 0 {
				t[m][k] = uint8(lane)
				k++
			}
		}
	}
	return t
}()

// accSegsAVX2 is accSegs for float32, in sparse_amd64.s. The pointers
// are to the first elements of out, ends, vals, idx and m; mask holds 32
// lanes, -1 for the first n%32 and 0 after.
//
//go:noescape
func accSegsAVX2(out *float32, ldOut, n int, ends *int32, nseg int, vals *float32, idx *int32, m *float32, ldM int, mask *[32]int32)

// accSegs32 is accSegs for float32 (already checked): AVX2 assembly, or
// gonum's Saxpy on CPUs without AVX2.
func accSegs32(out []float32, ldOut, n int, ends []int32, vals []float32, idx []int32, m []float32, ldM int) {
	if !useAVX2 {
		accSegsSaxpy(out, ldOut, n, ends, vals, idx, m, ldM)
		return
	}
	if ends[len(ends)-1] == 0 {
		return
	}
	var mask [32]int32
	for i := range n % 32 {
		mask[i] = -1
	}
	accSegsAVX2(&out[0], ldOut, n, &ends[0], len(ends), &vals[0], &idx[0], &m[0], ldM, &mask)
}

// compactAVX2 is compact32 for the first 8*nblk values of src, in
// sparse_amd64.s; it may write eight entries past the count it returns,
// and it prefetches 32*nblk bytes from next.
//
//go:noescape
func compactAVX2(idx *int32, val *float32, src *float32, nblk int, perm *[256][8]uint8, next *float32, cnt *int32) (count int)

// compact32 is compact for float32. next, if as long as src, is prefetched.
func compact32(idx []int32, val, src, next []float32, cnt []int32) int {
	nblk := len(src) / 8
	if !useAVX2 || nblk == 0 {
		return compactGo(idx, val, src, cnt)
	}
	cnt = cnt[:len(src)]
	pre := &src[0]
	if len(next) >= len(src) {
		pre = &next[0]
	}
	// Every block writes eight entries at an offset no larger than its own
	// position in src, so it stays inside idx[:len(src)] and val[:len(src)].
	idx, val = idx[:len(src)], val[:len(src)]
	k := compactAVX2(&idx[0], &val[0], &src[0], nblk, &compactPerm, pre, &cnt[0])
	for j := nblk * 8; j < len(src); j++ {
		v := src[j]
		idx[k] = int32(j)
		val[k] = v
		if v != 0 {
			k++
			cnt[j]++
		}
	}
	return k
}

// dotsAVX2 sets out[o], o < nout, to the eight-lane part of dots for the
// first 8*nvec elements of a and row o of w (ldw elements apart), in
// sparse_amd64.s.
//
//go:noescape
func dotsAVX2(out *float32, a *float32, w *float32, ldw, nout, nvec int)

// dots32 is dots for float32 (already checked).
func dots32(out, a, w []float32, ldw int) {
	if !useAVX2 || len(a) < 8 {
		dotsGo(out, a, w, ldw)
		return
	}
	dotsAVX2(&out[0], &a[0], &w[0], ldw, len(out), len(a)/8)
	dotTail(out, a, w, ldw)
}

// dots2AVX2 is dotsAVX2 for two vectors, a0 into out0 and a1 into out1,
// in sparse_amd64.s.
//
//go:noescape
func dots2AVX2(out0, out1, a0, a1, w *float32, ldw, nout, nvec int)

// dots2x32 is dots2 for float32 (already checked).
func dots2x32(out0, out1, a0, a1, w []float32, ldw int) {
	if !useAVX2 || len(a0) < 8 {
		dots32(out0, a0, w, ldw)
		dots32(out1, a1, w, ldw)
		return
	}
	dots2AVX2(&out0[0], &out1[0], &a0[0], &a1[0], &w[0], ldw, len(out0), len(a0)/8)
	dotTail(out0, a0, w, ldw)
	dotTail(out1, a1, w, ldw)
}

// scatterSegsAVX2 is scatterSegs for float32, in sparse_amd64.s.
//
//go:noescape
func scatterSegsAVX2(out *float32, ldOut, n int, ends *int32, nseg int, vals *float32, alpha float32, idx *int32, src *float32, ldSrc int)

// scatterSegs32 is scatterSegs for float32 (already checked).
func scatterSegs32(out []float32, ldOut, n int, ends []int32, vals []float32, alpha float32, idx []int32, src []float32, ldSrc int) {
	if !useAVX2 {
		scatterSegsGo(out, ldOut, n, ends, vals, alpha, idx, src, ldSrc)
		return
	}
	if ends[len(ends)-1] == 0 {
		return
	}
	scatterSegsAVX2(&out[0], ldOut, n, &ends[0], len(ends), &vals[0], alpha, &idx[0], &src[0], ldSrc)
}

// transposeAVX2 transposes nr×nc tiles of 8×8 values from src (lds values
// a row) into dst (ldd values a row), in sparse_amd64.s.
//
//go:noescape
func transposeAVX2(dst *float32, ldd int, src *float32, lds int, nr, nc int)

// transpose32 is transpose for float32. The largest part of whole 8×8
// tiles goes through transposeAVX2, 32×32 values at a call, so that each
// call's rows of src and dst stay in L1 (and the call stays short); the
// rows and columns left over, fewer than eight of each, are copied in Go.
// For the 2NN's first layer, there and back, it took 39–49 µs against
// transposeGo's 160–164 µs (BenchmarkTranspose784x200).
func transpose32(dst, src []float32, rows, cols int) {
	rows8, cols8 := rows&^7, cols&^7
	if !useAVX2 || rows8 == 0 || cols8 == 0 {
		transposeGo(dst, src, rows, cols)
		return
	}
	_ = dst[rows*cols-1]
	_ = src[rows*cols-1]
	const blk = 32
	for r0 := 0; r0 < rows8; r0 += blk {
		nr := min(blk, rows8-r0) / 8
		for c0 := 0; c0 < cols8; c0 += blk {
			nc := min(blk, cols8-c0) / 8
			transposeAVX2(&dst[c0*rows+r0], rows, &src[r0*cols+c0], cols, nr, nc)
		}
	}
	// The columns past cols8 of every row, then the rows past rows8 up to
	// column cols8.
	for r := range rows {
		for c := cols8; c < cols; c++ {
			dst[c*rows+r] = src[r*cols+c]
		}
	}
	for r := rows8; r < rows; r++ {
		for c := range cols8 {
			dst[c*rows+r] = src[r*cols+c]
		}
	}
}
