package model

import (
	"fmt"

	"gonum.org/v1/gonum/blas/blas32"
)

// The first layer of an MNIST model multiplies by pixels of which about
// 80% are zero. This file holds what the first layer uses instead of gemm
// when its inputs are sparse: the batch in compressed sparse row (CSR) form
// for the forward pass, the same entries regrouped by column (CSC, with the
// step size folded in) for the weight update, and one kernel, accSegs, that
// serves both. The first layer's weights are kept transposed (In×Out,
// "wᵀ") for the duration of a call, so that both passes add whole
// contiguous Out-long rows:
//
//	forward   z[r,:]  += x[r,j] · wᵀ[j,:]        for the non-zero x[r,j] of row r
//	backward  wᵀ[j,:] += alpha·x[r,j] · dz[r,:]  for the non-zero x[r,j] of column j
//
// and no input delta is needed for the first layer (a narrow layer, such
// as logistic regression's, does the update row by row from the CSR form
// with scatterSegs instead, its weights staying in cache). Every output element
// receives its terms one at a time, in increasing j (forward) or r
// (backward) order, each product rounded before it is added: exactly the
// operations gonum's gemm performs for the same products (it skips zero
// multipliers too), so with the gonum backend the sparse and dense paths
// agree bit for bit, and the assembly and Go versions of accSegs always do.
//
// Layers after the first use the same kernel for their backward products,
// over the non-zero entries of their deltas (zero wherever the layer's
// ReLU was off): input deltas dx[r,:] += dz[r,o] · W[o,:] by rows of dz,
// weight gradients W[o,:] += alpha·dz[r,o] · a[r,:] by its columns, again
// gonum's operations in gonum's order. Their forward products are dot
// products, dots, summed in a fixed lane order that the Go version
// reproduces. Which layers use these kernels and which use gemm is the
// backend's choice (ownKernelsMaxRows).

// csr is a batch of input rows in compressed sparse row form: the non-zero
// values of row r are val[ptr[r]:ptr[r+1]] at columns idx[ptr[r]:ptr[r+1]].
// cnt[j] counts the batch's non-zeros in column j, for transposeTo.
type csr[T Float] struct {
	ptr []int32 // rows+1
	idx []int32
	val []T
	cnt []int32 // In
}

// csc holds the same entries grouped by column: column j's entries are
// val[end[j-1]:end[j]] (end[-1] = 0) at rows row[...], in increasing row
// order, and val holds alpha times the input value.
type csc[T Float] struct {
	end []int32 // In
	row []int32
	val []T
}

// reserve makes s hold rows rows of width in without reallocating, and
// sets the width (the length of cnt) to in. Reserving the widest use first
// lets narrower ones reuse the buffers.
func (s *csr[T]) reserve(rows, in int) {
	if cap(s.ptr) < rows+1 {
		s.ptr = make([]int32, rows+1)
	}
	if cap(s.idx) < rows*in {
		s.idx = make([]int32, rows*in)
		s.val = make([]T, rows*in)
	}
	if cap(s.cnt) < in {
		s.cnt = make([]int32, in)
	}
	s.cnt = s.cnt[:in]
}

// setRow stores row r (0, 1, 2, ... in order) from src, keeping its
// non-zero entries (NaNs included). next, if not nil, is the row that will
// be stored after this one, which the AVX2 kernel prefetches.
func (s *csr[T]) setRow(r int, src, next []float32) {
	n, idx, val := s.rowSpace(r, len(src))
	var k int
	if v32, ok := any(val).([]float32); ok {
		k = compact32(idx, v32, src, next, s.cnt)
	} else {
		k = compactGo(idx, val, src, s.cnt)
	}
	s.ptr = append(s.ptr, int32(n+k))
}

// rowSpace starts row r (starting the matrix afresh at row 0) and returns
// where its entries begin and room for up to width of them.
func (s *csr[T]) rowSpace(r, width int) (n int, idx []int32, val []T) {
	if r == 0 {
		s.ptr = s.ptr[:1]
		s.ptr[0] = 0
		clear(s.cnt)
	}
	n = int(s.ptr[r])
	return n, s.idx[n : n+width], s.val[n : n+width]
}

// setRowT is setRow for a row of T, such as a layer's deltas.
func (s *csr[T]) setRowT(r int, src []T) {
	n, idx, val := s.rowSpace(r, len(src))
	var k int
	if v32, ok := any(val).([]float32); ok {
		k = compact32(idx, v32, any(src).([]float32), nil, s.cnt)
	} else {
		k = compactGo(idx, val, src, s.cnt)
	}
	s.ptr = append(s.ptr, int32(n+k))
}

// compact stores the non-zero entries of src (NaNs included) in val and
// their positions in idx, in order, adds one to cnt[j] for each non-zero
// src[j], and returns how many there are. idx, val and cnt must be at least
// as long as src; entries of idx and val past the count are overwritten
// with garbage. compactGo is the plain Go version; compact32 (float32, with
// an AVX2 kernel on amd64) gives the same result.
func compactGo[T, S Float](idx []int32, val []T, src []S, cnt []int32) int {
	idx, val, cnt = idx[:len(src)], val[:len(src)], cnt[:len(src)]
	k := 0
	for j, v := range src {
		// Write unconditionally and advance only past non-zeros.
		idx[k] = int32(j)
		val[k] = T(v)
		if v != 0 {
			k++
			cnt[j]++
		}
	}
	return k
}

// transposeTo fills c with the entries of the first rows rows of s grouped
// by column (in columns), multiplying every value by alpha.
func (s *csr[T]) transposeTo(c *csc[T], rows, in int, alpha T) {
	nnz := int(s.ptr[rows])
	if cap(c.end) < in {
		c.end = make([]int32, in)
	}
	if cap(c.row) < len(s.idx) {
		c.row = make([]int32, len(s.idx))
		c.val = make([]T, len(s.val))
	}
	end := c.end[:in]
	// Turn the column counts into start offsets, then let the fill loop
	// advance each start to its column's end.
	var sum int32
	for j, n := range s.cnt[:in] {
		end[j] = sum
		sum += n
	}
	if int(sum) != nnz {
		panic(fmt.Sprintf("model: column counts add up to %d, expected the batch's %d non-zeros", sum, nnz))
	}
	for r := range rows {
		lo, hi := s.ptr[r], s.ptr[r+1]
		for k := lo; k < hi; k++ {
			j := s.idx[k]
			p := end[j]
			c.row[p] = int32(r)
			c.val[p] = alpha * s.val[k]
			end[j] = p + 1
		}
	}
}

// accSegs adds to out, for every segment s < len(ends) and every entry k
// of it (k from ends[s-1] to ends[s]-1, with ends[-1] = 0) in increasing
// order, vals[k] times row idx[k] of the row-major matrix m:
//
//	out[s*ldOut+i] += vals[k] * m[idx[k]*ldM+i]   for i < n
//
// each product rounded to T before the addition (no fused multiply-add), so
// every implementation gives the same bits. For a CSR batch the segments
// are rows and out is z; for its CSC form they are columns and out is wᵀ.
//
// accSegs trusts idx to lie in [0, bound): the callers build idx
// themselves (column positions below In, row numbers below the batch size),
// so checking every entry would only repeat work. It checks that row
// bound-1 of m, every output row and every entry fit in their slices, and
// panics if not.
func accSegs[T Float](out []T, ldOut, n int, ends []int32, vals []T, idx []int32, bound int, m []T, ldM int) {
	nseg := len(ends)
	if nseg == 0 || n == 0 {
		return
	}
	nnz := int(ends[nseg-1])
	if n > ldOut || (nseg-1)*ldOut+n > len(out) || nnz > len(idx) || nnz > len(vals) || (bound-1)*ldM+n > len(m) {
		panic(fmt.Sprintf("model: accSegs: %d segments of %d values %d apart with %d entries (rows below %d, %d apart) do not fit in %d outputs, %d indices, %d values and a matrix of %d",
			nseg, n, ldOut, nnz, bound, ldM, len(out), len(idx), len(vals), len(m)))
	}
	checkEnds("accSegs", ends)
	switch o := any(out).(type) {
	case []float32:
		accSegs32(o, ldOut, n, ends, any(vals).([]float32), idx, any(m).([]float32), ldM)
	case []float64:
		accSegsGo(o, ldOut, n, ends, any(vals).([]float64), idx, any(m).([]float64), ldM)
	}
}

// accSegsGo is accSegs in plain Go, without the checks.
func accSegsGo[T Float](out []T, ldOut, n int, ends []int32, vals []T, idx []int32, m []T, ldM int) {
	lo := int32(0)
	for s, hi := range ends {
		o := out[s*ldOut : s*ldOut+n]
		for k := lo; k < hi; k++ {
			v, j := vals[k], int(idx[k])
			for i, x := range m[j*ldM : j*ldM+n] {
				o[i] += T(v * x) // the conversion forbids fusing into an FMA
			}
		}
		lo = hi
	}
}

// accSegsSaxpy is accSegs for float32 through gonum's Saxpy, which
// performs the same arithmetic (a rounded product, then an addition).
func accSegsSaxpy(out []float32, ldOut, n int, ends []int32, vals []float32, idx []int32, m []float32, ldM int) {
	impl := blas32.Implementation()
	lo := int32(0)
	for s, hi := range ends {
		o := out[s*ldOut : s*ldOut+n]
		for k := lo; k < hi; k++ {
			j := int(idx[k])
			impl.Saxpy(n, vals[k], m[j*ldM:j*ldM+n], 1, o, 1)
		}
		lo = hi
	}
}

// scatterSegs is accSegs turned around: for every segment s < len(ends)
// and entry k of it, in order,
//
//	out[idx[k]*ldOut+i] += (alpha*vals[k]) * src[s*ldSrc+i]   for i < n
//
// each product rounded before it is added. Over a CSR batch (segments are
// rows, idx columns) this is the first layer's weight update without
// building the CSC form: every output element receives the same terms in
// the same (row) order as accSegs over the CSC entries, so the bits are the
// same; it wins when the output rows are short enough for the weights to
// stay in cache (see scatterMaxOut). Like accSegs it trusts idx to lie in
// [0, bound) and checks the rest.
func scatterSegs[T Float](out []T, ldOut, n int, ends []int32, vals []T, alpha T, idx []int32, bound int, src []T, ldSrc int) {
	nseg := len(ends)
	if nseg == 0 || n == 0 {
		return
	}
	nnz := int(ends[nseg-1])
	if n > ldOut || n > ldSrc || (bound-1)*ldOut+n > len(out) || (nseg-1)*ldSrc+n > len(src) || nnz > len(idx) || nnz > len(vals) {
		panic(fmt.Sprintf("model: scatterSegs: %d segments of %d values (%d apart) with %d entries (rows below %d, %d apart) do not fit in %d sources, %d indices, %d values and %d outputs",
			nseg, n, ldSrc, nnz, bound, ldOut, len(src), len(idx), len(vals), len(out)))
	}
	checkEnds("scatterSegs", ends)
	switch o := any(out).(type) {
	case []float32:
		scatterSegs32(o, ldOut, n, ends, any(vals).([]float32), float32(alpha), idx, any(src).([]float32), ldSrc)
	case []float64:
		scatterSegsGo(o, ldOut, n, ends, any(vals).([]float64), float64(alpha), idx, any(src).([]float64), ldSrc)
	}
}

// scatterSegsGo is scatterSegs in plain Go, without the checks.
func scatterSegsGo[T Float](out []T, ldOut, n int, ends []int32, vals []T, alpha T, idx []int32, src []T, ldSrc int) {
	lo := int32(0)
	for s, hi := range ends {
		row := src[s*ldSrc : s*ldSrc+n]
		for k := lo; k < hi; k++ {
			v, j := alpha*vals[k], int(idx[k])
			o := out[j*ldOut : j*ldOut+n]
			for i, x := range row {
				o[i] += T(v * x) // the conversion forbids fusing into an FMA
			}
		}
		lo = hi
	}
}

// dots sets out[o] to the dot product of a with row o of w (rows ldw
// apart), for o < len(out), summed in a fixed order: eight lanes (lane l
// takes the products of elements l, l+8, ... below len(a) rounded down to
// a multiple of 8, each rounded before it is added, in order), then the
// lanes as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the remaining
// products one by one. dotGo is that order in plain Go; the AVX2 version
// gives the same bits. It panics if a row does not fit in w.
func dots[T Float](out, a, w []T, ldw int) {
	if len(out) == 0 {
		return
	}
	checkRowsFit("dots", len(out), len(a), ldw, len(w))
	switch o := any(out).(type) {
	case []float32:
		dots32(o, any(a).([]float32), any(w).([]float32), ldw)
	case []float64:
		dotsGo(o, any(a).([]float64), any(w).([]float64), ldw)
	}
}

// dots2 is dots for two vectors of the same length, a0 into out0 and a1
// into out1, with the same results; for float32 on amd64 one kernel does
// both, loading each row of w once for the two.
func dots2[T Float](out0, out1, a0, a1, w []T, ldw int) {
	if len(out1) != len(out0) || len(a1) != len(a0) {
		panic(fmt.Sprintf("model: dots2: outputs of %d and %d values, vectors of %d and %d", len(out0), len(out1), len(a0), len(a1)))
	}
	if len(out0) == 0 {
		return
	}
	checkRowsFit("dots2", len(out0), len(a0), ldw, len(w))
	switch o := any(out0).(type) {
	case []float32:
		dots2x32(o, any(out1).([]float32), any(a0).([]float32), any(a1).([]float32), any(w).([]float32), ldw)
	case []float64:
		dotsGo(o, any(a0).([]float64), any(w).([]float64), ldw)
		dotsGo(any(out1).([]float64), any(a1).([]float64), any(w).([]float64), ldw)
	}
}

// checkRowsFit panics, naming the kernel, unless rows rows of n values, ldw
// apart, fit in a matrix of size values: the kernels index them unchecked.
func checkRowsFit(kernel string, rows, n, ldw, size int) {
	if n > ldw || (rows-1)*ldw+n > size {
		panic(fmt.Sprintf("model: %s: %d rows of %d values %d apart do not fit in %d values", kernel, rows, n, ldw, size))
	}
}

// dotsGo is dots in plain Go, one dotGo per row.
func dotsGo[T Float](out, a, w []T, ldw int) {
	for i := range out {
		out[i] = dotGo(a, w[i*ldw:i*ldw+len(a)])
	}
}

// dotGo is one dot product of dots, in plain Go.
func dotGo[T Float](x, y []T) T {
	y = y[:len(x)]
	// Eight lanes in eight variables, which the compiler keeps in
	// registers (an [8]T array lives in memory: every add then waits for a
	// store); the same sums in the same order as the AVX2 kernel's lanes.
	// The conversions forbid fusing a product into an FMA.
	var a0, a1, a2, a3, a4, a5, a6, a7 T
	nv := len(x) &^ 7
	for i := 0; i < nv; i += 8 {
		xs, ys := x[i:i+8:i+8], y[i:i+8:i+8]
		a0 += T(xs[0] * ys[0])
		a1 += T(xs[1] * ys[1])
		a2 += T(xs[2] * ys[2])
		a3 += T(xs[3] * ys[3])
		a4 += T(xs[4] * ys[4])
		a5 += T(xs[5] * ys[5])
		a6 += T(xs[6] * ys[6])
		a7 += T(xs[7] * ys[7])
	}
	s := ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
	for i := nv; i < len(x); i++ {
		s += T(x[i] * y[i])
	}
	return s
}

// dotTail adds to out[o] the products of the elements of a past the last
// multiple of eight with those of row o of w, one by one: what dots does
// after the eight lanes.
func dotTail[T Float](out, a, w []T, ldw int) {
	nv := len(a) &^ 7
	if nv == len(a) {
		return
	}
	for o := range out {
		s := out[o]
		row := w[o*ldw : o*ldw+len(a)]
		for i := nv; i < len(a); i++ {
			s += T(a[i] * row[i])
		}
		out[o] = s
	}
}

// transpose writes the transpose of the rows×cols row-major matrix src
// into dst (cols×rows): for float32, transpose32 (AVX2 on amd64), else
// transposeGo.
func transpose[T Float](dst, src []T, rows, cols int) {
	if d, ok := any(dst).([]float32); ok {
		transpose32(d, any(src).([]float32), rows, cols)
		return
	}
	transposeGo(dst, src, rows, cols)
}

// transposeGo is transpose in plain Go, in cache-sized blocks, four source
// rows at a time so that each store fills four adjacent values of a dst row
// (1.8× faster than one row at a time for the 2NN's first layer).
func transposeGo[T Float](dst, src []T, rows, cols int) {
	const blk = 32
	_ = dst[rows*cols-1]
	_ = src[rows*cols-1]
	for r0 := 0; r0 < rows; r0 += blk {
		r1 := min(r0+blk, rows)
		for c0 := 0; c0 < cols; c0 += blk {
			c1 := min(c0+blk, cols)
			r := r0
			for ; r+4 <= r1; r += 4 {
				s0 := src[r*cols : r*cols+cols]
				s1 := src[(r+1)*cols : (r+1)*cols+cols]
				s2 := src[(r+2)*cols : (r+2)*cols+cols]
				s3 := src[(r+3)*cols : (r+3)*cols+cols]
				for c := c0; c < c1; c++ {
					d := dst[c*rows+r : c*rows+r+4]
					d[0], d[1], d[2], d[3] = s0[c], s1[c], s2[c], s3[c]
				}
			}
			for ; r < r1; r++ {
				s := src[r*cols : r*cols+cols]
				for c := c0; c < c1; c++ {
					dst[c*rows+r] = s[c]
				}
			}
		}
	}
}

// checkEnds panics, naming the kernel, when segment ends decrease: the
// kernels index with them unchecked.
func checkEnds(kernel string, ends []int32) {
	lo := int32(0)
	for _, hi := range ends {
		if hi < lo {
			panic("model: " + kernel + ": segment ends decrease")
		}
		lo = hi
	}
}
