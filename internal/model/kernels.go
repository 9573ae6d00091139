package model

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"

	"fedgather/internal/data"
)

// gatherIdx loads the examples idx of ds as rows 0..len(idx)-1 of the
// batch: into the CSR buffers when the first layer runs sparse, else into
// x. next is the example the following batch starts with, or -1; its
// features are prefetched.
func (w *WorkspaceOf[T]) gatherIdx(ds *data.Dataset, idx []int, next int) {
	for r, i := range idx {
		if r+1 < len(idx) {
			w.loadRow(ds, r, i, idx[r+1])
		} else {
			w.loadRow(ds, r, i, next)
		}
	}
}

// gatherRange loads examples lo..lo+rows-1 of ds as the batch.
func (w *WorkspaceOf[T]) gatherRange(ds *data.Dataset, lo, rows int) {
	for r := range rows {
		w.loadRow(ds, r, lo+r, -1) // rows in memory order need no prefetch hint
	}
}

// loadRow loads example i of ds as batch row r, converting to T. next is
// the example that will be loaded after it, or -1.
func (w *WorkspaceOf[T]) loadRow(ds *data.Dataset, r, i, next int) {
	d := ds.Dim
	src := ds.X[i*d : i*d+d]
	if w.sparse {
		var nx []float32
		if next >= 0 {
			nx = ds.X[next*d : next*d+d]
		}
		w.in.setRow(r, src, nx)
	} else {
		dst := w.x[r*d : r*d+d]
		for j, v := range src {
			dst[j] = T(v)
		}
	}
	y := ds.Y[i]
	if y < 0 || int(y) >= w.classes {
		panic(fmt.Sprintf("model: example %d has label %d, expected a label in [0, %d)", i, y, w.classes))
	}
	w.y[r] = y
}

// forward computes every layer's output for the first rows rows of the
// batch: act[l] = relu(in·Wᵀ + b) for hidden layers and the logits
// in·Wᵀ + b for the last. The first layer's weights are read from the
// transposed copy w.wt, through the sparse kernel or gemm.
func (w *WorkspaceOf[T]) forward(params []T, rows int) {
	last := len(w.layers) - 1
	var in []T
	for l, ly := range w.layers {
		z := w.act[l][:rows*ly.Out]
		bias := params[ly.BOff : ly.BOff+ly.Out]
		for r := range rows {
			copy(z[r*ly.Out:(r+1)*ly.Out], bias)
		}
		switch {
		case l > 0 && w.ownKernels(rows):
			// z[r,o] = b[o] + a[r,:]·W[o,:], dot products in a fixed order,
			// two rows at a time (dots2 gives what dots gives for each).
			wl := params[ly.WOff:ly.BOff]
			t0, t1 := w.dotBuf[:ly.Out], w.dotBuf[ly.Out:2*ly.Out]
			r := 0
			for ; r+2 <= rows; r += 2 {
				dots2(t0, t1, in[r*ly.In:(r+1)*ly.In], in[(r+1)*ly.In:(r+2)*ly.In], wl, ly.In)
				addTo(z[r*ly.Out:(r+1)*ly.Out], t0)
				addTo(z[(r+1)*ly.Out:(r+2)*ly.Out], t1)
			}
			if r < rows {
				dots(t0, in[r*ly.In:(r+1)*ly.In], wl, ly.In)
				addTo(z[r*ly.Out:(r+1)*ly.Out], t0)
			}
		case l > 0:
			gemm(false, true, rows, ly.Out, ly.In, 1, in, ly.In, params[ly.WOff:ly.BOff], ly.In, 1, z, ly.Out)
		case w.sparse:
			s := &w.in
			accSegs(z, ly.Out, ly.Out, s.ptr[1:rows+1], s.val, s.idx, ly.In, w.wt, ly.Out)
		default:
			gemm(false, false, rows, ly.Out, ly.In, 1, w.x[:rows*ly.In], ly.In, w.wt, ly.Out, 1, z, ly.Out)
		}
		if l < last {
			relu(z)
		}
		in = z
	}
}

// addTo adds v to z, element by element.
func addTo[T Float](z, v []T) {
	z = z[:len(v)]
	for o, x := range v {
		z[o] += x
	}
}

// softmax turns the logits of the first rows rows into the mean-loss
// contribution: it adds each row's cross-entropy to sum, in row order (so a
// total does not depend on how rows were split into batches), and returns
// the new sum and the number of rows whose first largest logit is the label. When backward is set it also
// writes d(loss)/d(logits) = (softmax - onehot) * scale into the last
// layer's delta. Softmax subtracts the row maximum and the loss uses
// log-sum-exp, both in float64, with one exponential per logit.
func (w *WorkspaceOf[T]) softmax(sum float64, rows int, scale float64, backward bool) (float64, int) {
	correct := 0
	last := len(w.layers) - 1
	c := w.classes
	logits := w.act[last]
	delta := w.delta[last]
	for r := range rows {
		z := logits[r*c : (r+1)*c]
		y := int(w.y[r])
		arg, mx := 0, z[0]
		for j := 1; j < len(z); j++ {
			if z[j] > mx {
				arg, mx = j, z[j]
			}
		}
		if arg == y {
			correct++
		}
		m := float64(mx)
		e := w.exps[:c]
		var s float64
		for j, v := range z {
			e[j] = math.Exp(float64(v) - m)
			s += e[j]
		}
		sum += m + math.Log(s) - float64(z[y])
		if backward {
			d := delta[r*c : (r+1)*c]
			for j, ej := range e {
				p := ej / s
				if j == y {
					p--
				}
				d[j] = T(p * scale)
			}
		}
	}
	return sum, correct
}

// backward propagates the last layer's delta down the network and writes
// dst = beta*dst + alpha*grad for every weight and bias, where grad is the
// gradient of the loss whose delta softmax wrote; the first layer's weights
// go to dst0 instead, transposed (In×Out) like w.wt. With dst = grad,
// alpha = 1 and beta = 0 it computes a gradient; with dst = params,
// dst0 = w.wt, alpha = -lr and beta = 1 it is a fused SGD step. Each
// layer's input delta is computed from its weights before those weights are
// written, so the fused form uses the pre-step weights throughout:
// mathematically a separate gradient and step, though rounding differs
// because each row's contribution is added to the weights in turn. The
// first layer needs no input delta.
func (w *WorkspaceOf[T]) backward(params []T, rows int, dst, dst0 []T, alpha, beta T) {
	alphas := w.alphas[:rows]
	for r := range alphas {
		alphas[r] = alpha
	}
	for l := len(w.layers) - 1; l >= 0; l-- {
		ly := w.layers[l]
		dz := w.delta[l][:rows*ly.Out]
		switch {
		case l > 0 && w.ownKernels(rows):
			in := w.act[l-1][:rows*ly.In]
			// The deltas of a hidden layer are zero wherever its ReLU was
			// off (and a tenth of the last layer's are small but not zero),
			// so both products go through their non-zero entries: rows of
			// dz for the input delta, columns of dz for the weights. These
			// are gonum's gemm operations in gonum's order (see accSegs).
			d := &w.dz
			d.reserve(rows, ly.Out) // sized by begin: no allocation
			for r := range rows {
				d.setRowT(r, dz[r*ly.Out:(r+1)*ly.Out])
			}
			// delta[l-1] = (dz · W) ⊙ relu'(act[l-1]); relu'(0) = 0 as in PyTorch.
			dx := w.delta[l-1][:rows*ly.In]
			clear(dx)
			accSegs(dx, ly.In, ly.In, d.ptr[1:rows+1], d.val, d.idx, ly.Out, params[ly.WOff:ly.BOff], ly.In)
			reluMask(dx, in)
			// W = beta*W + alpha * dzᵀ · in, one output (column of dz) at a time.
			dw := dst[ly.WOff:ly.BOff]
			scale(dw, beta)
			d.transposeTo(&w.dzT, rows, ly.Out, alpha)
			accSegs(dw, ly.In, ly.In, w.dzT.end[:ly.Out], w.dzT.val, w.dzT.row, rows, in, ly.In)
		case l > 0:
			in := w.act[l-1][:rows*ly.In]
			// delta[l-1] = (dz · W) ⊙ relu'(act[l-1]); relu'(0) = 0 as in PyTorch.
			dx := w.delta[l-1][:rows*ly.In]
			gemm(false, false, rows, ly.In, ly.Out, 1, dz, ly.Out, params[ly.WOff:ly.BOff], ly.In, 0, dx, ly.In)
			reluMask(dx, in)
			// W = beta*W + alpha * dzᵀ · in
			gemm(true, false, ly.Out, ly.In, rows, alpha, dz, ly.Out, in, ly.In, beta, dst[ly.WOff:ly.BOff], ly.In)
		case w.sparse:
			// Wᵀ = beta*Wᵀ + alpha * inᵀ · dz: for narrow layers row by row
			// straight from the CSR batch, else one input column at a time
			// from its CSC form (the same operations in the same order).
			scale(dst0, beta)
			if w.scatterUpdate(ly.Out) {
				scatterSegs(dst0, ly.Out, ly.Out, w.in.ptr[1:rows+1], w.in.val, alpha, w.in.idx, ly.In, dz, ly.Out)
			} else {
				c := &w.inT
				w.in.transposeTo(c, rows, ly.In, alpha)
				accSegs(dst0, ly.Out, ly.Out, c.end[:ly.In], c.val, c.row, rows, dz, ly.Out)
			}
		default:
			gemm(true, false, ly.In, ly.Out, rows, alpha, w.x[:rows*ly.In], ly.In, dz, ly.Out, beta, dst0, ly.Out)
		}
		// b = beta*b + alpha * column sums of dz, rows added in order.
		db := dst[ly.BOff : ly.BOff+ly.Out]
		scale(db, beta)
		w.colEnd[0] = int32(rows)
		accSegs(db, ly.Out, ly.Out, w.colEnd[:], alphas, w.iota[:rows], rows, dz, ly.Out)
	}
}

// relu sets the negative elements of z (and -0) to +0, leaving NaNs with
// a clear sign bit alone. It works on the bits, without a branch per
// element.
func relu[T Float](z []T) {
	switch v := any(z).(type) {
	case []float32:
		for i, x := range v {
			b := math.Float32bits(x)
			v[i] = math.Float32frombits(b &^ uint32(int32(b)>>31))
		}
	case []float64:
		for i, x := range v {
			b := math.Float64bits(x)
			v[i] = math.Float64frombits(b &^ uint64(int64(b)>>63))
		}
	}
}

// reluMask zeroes dx[i] wherever a[i], a ReLU output, is zero: relu'(0) = 0
// as in PyTorch. A positive (or NaN) a[i] keeps dx[i]. Branch-free.
func reluMask[T Float](dx, a []T) {
	switch d := any(dx).(type) {
	case []float32:
		a := any(a).([]float32)[:len(d)]
		for i, x := range a {
			keep := uint32(-int32(math.Float32bits(x)) >> 31) // all ones when the bits are positive
			d[i] = math.Float32frombits(math.Float32bits(d[i]) & keep)
		}
	case []float64:
		a := any(a).([]float64)[:len(d)]
		for i, x := range a {
			keep := uint64(-int64(math.Float64bits(x)) >> 63)
			d[i] = math.Float64frombits(math.Float64bits(d[i]) & keep)
		}
	}
}

// scale multiplies v by beta, with beta = 0 clearing v (even of NaNs, as
// BLAS does) and beta = 1 leaving it alone.
func scale[T Float](v []T, beta T) {
	switch beta {
	case 0:
		clear(v)
	case 1:
	default:
		for j := range v {
			v[j] *= beta
		}
	}
}

// shuffle permutes idx uniformly (Fisher–Yates) with draws from p. The
// algorithm is fixed here so that a seed means the same order whatever the
// Go release.
func shuffle(p *rand.PCG, idx []int) {
	for i := len(idx) - 1; i > 0; i-- {
		j := int(boundedUint(p, uint64(i+1)))
		idx[i], idx[j] = idx[j], idx[i]
	}
}

// boundedUint returns a uniform integer in [0, n) for n > 0 using Lemire's
// multiply-and-reject method.
func boundedUint(p *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(p.Uint64(), n)
	if lo < n {
		threshold := -n % n
		for lo < threshold {
			hi, lo = bits.Mul64(p.Uint64(), n)
		}
	}
	return hi
}
