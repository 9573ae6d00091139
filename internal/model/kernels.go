package model

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"

	"fedgather/internal/data"
)

// gatherIdx copies the examples idx of ds into rows 0..len(idx)-1 of the
// batch buffers.
func (w *WorkspaceOf[T]) gatherIdx(ds *data.Dataset, idx []int) {
	for r, i := range idx {
		w.copyRow(ds, r, i)
	}
}

// gatherRange copies examples lo..lo+rows-1 of ds into the batch buffers.
func (w *WorkspaceOf[T]) gatherRange(ds *data.Dataset, lo, rows int) {
	for r := range rows {
		w.copyRow(ds, r, lo+r)
	}
}

// copyRow copies example i of ds into batch row r, converting to T.
func (w *WorkspaceOf[T]) copyRow(ds *data.Dataset, r, i int) {
	d := ds.Dim
	dst := w.x[r*d : r*d+d]
	for j, v := range ds.X[i*d : i*d+d] {
		dst[j] = T(v)
	}
	y := ds.Y[i]
	if y < 0 || int(y) >= w.classes {
		panic(fmt.Sprintf("model: example %d has label %d, expected a label in [0, %d)", i, y, w.classes))
	}
	w.y[r] = y
}

// forward computes every layer's output for the first rows rows of the
// batch: act[l] = relu(in·Wᵀ + b) for hidden layers and the logits
// in·Wᵀ + b for the last.
func (w *WorkspaceOf[T]) forward(params []T, rows int) {
	in := w.x[:rows*w.spec.Sizes[0]]
	last := len(w.layers) - 1
	for l, ly := range w.layers {
		z := w.act[l][:rows*ly.Out]
		bias := params[ly.BOff : ly.BOff+ly.Out]
		for r := range rows {
			copy(z[r*ly.Out:(r+1)*ly.Out], bias)
		}
		gemm(false, true, rows, ly.Out, ly.In, 1, in, ly.In, params[ly.WOff:ly.BOff], ly.In, 1, z, ly.Out)
		if l < last {
			for i, v := range z {
				if v < 0 {
					z[i] = 0
				}
			}
		}
		in = z
	}
}

// softmax turns the logits of the first rows rows into the mean-loss
// contribution: it adds each row's cross-entropy to sum, in row order (so a
// total does not depend on how rows were split into batches), and returns
// the new sum and the number of rows whose first largest logit is the label. When backward is set it also
// writes d(loss)/d(logits) = (softmax - onehot) * scale into the last
// layer's delta. Softmax subtracts the row maximum and the loss uses
// log-sum-exp, both in float64.
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
		var s float64
		for _, v := range z {
			s += math.Exp(float64(v) - m)
		}
		lse := m + math.Log(s)
		sum += lse - float64(z[y])
		if backward {
			d := delta[r*c : (r+1)*c]
			for j, v := range z {
				p := math.Exp(float64(v) - lse)
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
// gradient of the loss whose delta softmax wrote. With dst = grad, alpha = 1
// and beta = 0 it computes a gradient; with dst = params, alpha = -lr and
// beta = 1 it is a fused SGD step. Each layer's input delta is computed from
// its weights before those weights are written, so the fused form uses the
// pre-step weights throughout: mathematically a separate gradient and step,
// though rounding differs because each row's contribution is added to the
// weights in turn.
func (w *WorkspaceOf[T]) backward(params []T, rows int, dst []T, alpha, beta T) {
	for l := len(w.layers) - 1; l >= 0; l-- {
		ly := w.layers[l]
		dz := w.delta[l][:rows*ly.Out]
		var in []T
		if l == 0 {
			in = w.x[:rows*ly.In]
		} else {
			in = w.act[l-1][:rows*ly.In]
			// delta[l-1] = (dz · W) ⊙ relu'(act[l-1]); relu'(0) = 0 as in PyTorch.
			dx := w.delta[l-1][:rows*ly.In]
			gemm(false, false, rows, ly.In, ly.Out, 1, dz, ly.Out, params[ly.WOff:ly.BOff], ly.In, 0, dx, ly.In)
			for i, a := range in {
				if a <= 0 {
					dx[i] = 0
				}
			}
		}
		// W = beta*W + alpha * dzᵀ · in
		gemm(true, false, ly.Out, ly.In, rows, alpha, dz, ly.Out, in, ly.In, beta, dst[ly.WOff:ly.BOff], ly.In)
		// b = beta*b + alpha * column sums of dz
		db := dst[ly.BOff : ly.BOff+ly.Out]
		switch beta {
		case 0:
			clear(db)
		case 1:
		default:
			for j := range db {
				db[j] *= beta
			}
		}
		for r := range rows {
			for j, v := range dz[r*ly.Out : (r+1)*ly.Out] {
				db[j] += alpha * v
			}
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
