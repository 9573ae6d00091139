package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"fedgather/internal/data"
)

// sparsify sets each feature of ds to zero with probability zeros, like the
// blank background of an MNIST image, and returns ds.
func sparsify(ds *data.Dataset, zeros float64, seed uint64) *data.Dataset {
	r := rand.New(rand.NewPCG(seed, 3))
	for i := range ds.X {
		if r.Float64() < zeros {
			ds.X[i] = 0
		}
	}
	return ds
}

// TestCompact checks the AVX2 compaction (compact32) and the generic one
// against a plain reference, for lengths around the eight-lane blocks,
// densities from empty to full, and the special values -0 (dropped, as
// v != 0 is false) and NaN (kept).
func TestCompact(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 784} {
		for _, density := range []float64{0, 0.05, 0.2, 0.5, 0.9, 1} {
			src := make([]float32, n)
			for i := range src {
				switch u := r.Float64(); {
				case u < density/2:
					src[i] = r.Float32() + 0.1
				case u < density:
					src[i] = -r.Float32() - 0.1
				case u < density+0.02:
					src[i] = float32(math.Copysign(0, -1))
				}
			}
			if n > 5 && density > 0 {
				src[n/2] = float32(math.NaN())
			}
			var wantIdx []int32
			var wantVal []float32
			wantCnt := make([]int32, n)
			for j, v := range src {
				if v != 0 {
					wantIdx = append(wantIdx, int32(j))
					wantVal = append(wantVal, v)
					wantCnt[j] = 1
				}
			}
			check := func(name string, k int, idx []int32, val []float32, cnt []int32) {
				t.Helper()
				if k != len(wantIdx) || !slices.Equal(idx[:k], wantIdx) || !bitsEqual(val[:k], wantVal) || !slices.Equal(cnt[:n], wantCnt) {
					t.Errorf("n=%d density %.2f: %s kept %d entries %v %v (counts %v), want %d: %v %v", n, density, name, k, idx[:k], val[:k], cnt[:n], len(wantIdx), wantIdx, wantVal)
				}
			}
			// Guard entries past len(src) must survive: compact may write
			// only inside idx[:len(src)] and val[:len(src)].
			const guard = 8
			idx, val, cnt := make([]int32, n+guard), make([]float32, n+guard), make([]int32, n+guard)
			for i := n; i < n+guard; i++ {
				idx[i], val[i], cnt[i] = -7, -7, -7
			}
			k := compact32(idx[:n], val[:n], src, nil, cnt[:n])
			check("compact32", k, idx, val, cnt)
			for i := n; i < n+guard; i++ {
				if idx[i] != -7 || val[i] != -7 || cnt[i] != -7 {
					t.Fatalf("n=%d: compact32 wrote past the end of its buffers", n)
				}
			}
			clear(cnt)
			k = compactGo(idx, val, src, cnt)
			check("compactGo", k, idx, val, cnt)
		}
	}
}

// TestAccSegs checks the float32 kernel (AVX2 on amd64) against the plain
// Go version and the Saxpy version bit for bit, over output widths that
// exercise every block size and lane mask, empty segments, and output rows
// with padding that must not be touched.
func TestAccSegs(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, n := range []int{1, 3, 7, 8, 9, 10, 15, 16, 17, 24, 31, 32, 33, 40, 63, 64, 65, 66, 71, 72, 73, 96, 100, 127, 128, 129, 136, 137, 200, 257, 264} {
		for trial := range 4 {
			pad := trial % 3
			ldOut, ldM := n+pad, n+2*pad
			mrows := 1 + r.IntN(20)
			m := make([]float32, (mrows-1)*ldM+n)
			for i := range m {
				m[i] = r.Float32()*2 - 1
			}
			nseg := 1 + r.IntN(6)
			ends := make([]int32, nseg)
			var idx []int32
			var vals []float32
			for s := range nseg {
				if r.IntN(4) > 0 { // leave about one segment in four empty
					for range r.IntN(12) {
						idx = append(idx, int32(r.IntN(mrows)))
						vals = append(vals, r.Float32()*4-2)
					}
				}
				ends[s] = int32(len(idx))
			}
			out0 := make([]float32, (nseg-1)*ldOut+n+pad)
			for i := range out0 {
				out0[i] = r.Float32()
			}
			outA, outG, outS := slices.Clone(out0), slices.Clone(out0), slices.Clone(out0)
			accSegs(outA[:len(out0)-pad], ldOut, n, ends, vals, idx, mrows, m, ldM)
			accSegsGo(outG[:len(out0)-pad], ldOut, n, ends, vals, idx, m, ldM)
			if len(idx) > 0 {
				accSegsSaxpy(outS[:len(out0)-pad], ldOut, n, ends, vals, idx, m, ldM)
			}
			if !bitsEqual(outA, outG) || !bitsEqual(outA, outS) {
				t.Fatalf("n=%d ldOut=%d ldM=%d ends=%v: accSegs, accSegsGo and accSegsSaxpy disagree", n, ldOut, ldM, ends)
			}
			// Padding between and after output rows is untouched.
			for s := range nseg {
				for i := s*ldOut + n; i < min((s+1)*ldOut, len(out0)); i++ {
					if math.Float32bits(outA[i]) != math.Float32bits(out0[i]) {
						t.Fatalf("n=%d ldOut=%d: padding element %d changed", n, ldOut, i)
					}
				}
			}
			// And the result is what the definition says, to float32 rounding.
			lo := int32(0)
			for s, hi := range ends {
				for i := range n {
					want := float64(out0[s*ldOut+i])
					for k := lo; k < hi; k++ {
						want += float64(vals[k]) * float64(m[int(idx[k])*ldM+i])
					}
					if got := float64(outA[s*ldOut+i]); math.Abs(got-want) > 1e-4*(1+math.Abs(want)) {
						t.Fatalf("n=%d segment %d lane %d: got %v, want %v", n, s, i, got, want)
					}
				}
				lo = hi
			}
		}
	}
}

func TestAccSegsPanics(t *testing.T) {
	m := make([]float32, 30) // 3 rows of 10
	out := make([]float32, 20)
	for name, f := range map[string]func(){
		"bound past m":    func() { accSegs(out, 10, 10, []int32{1}, []float32{1}, []int32{0}, 4, m, 10) },
		"out too short":   func() { accSegs(out, 10, 10, []int32{0, 0, 1}, []float32{1}, []int32{0}, 3, m, 10) },
		"n over ldOut":    func() { accSegs(out, 5, 10, []int32{1}, []float32{1}, []int32{0}, 3, m, 10) },
		"ends decrease":   func() { accSegs(out, 10, 10, []int32{1, 0}, []float32{1}, []int32{0}, 3, m, 10) },
		"too few entries": func() { accSegs(out, 10, 10, []int32{2}, []float32{1}, []int32{0}, 3, m, 10) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("accSegs did not panic")
				}
			}()
			f()
		})
	}
}

// TestCSR builds a batch in CSR form and its CSC transpose and checks both
// against the dense rows: every index in range, columns in row order, and
// the CSC values scaled by alpha.
func TestCSR(t *testing.T) {
	const rows, in, alpha = 9, 37, -0.25
	ds := sparsify(randomDataset(rows, in, 3, 4), 0.7, 5)
	var s csr[float32]
	var c csc[float32]
	for pass := range 2 { // the second pass reuses the buffers
		s.reserve(rows, in)
		for r := range rows {
			var next []float32
			if r+1 < rows {
				next = ds.Row(r + 1)
			}
			s.setRow(r, ds.Row(r), next)
		}
		s.transposeTo(&c, rows, in, alpha)
		type entry struct {
			r, j int
			v    float32
		}
		var fromRows, fromCols []entry
		for r := range rows {
			for k := s.ptr[r]; k < s.ptr[r+1]; k++ {
				j := int(s.idx[k])
				if j < 0 || j >= in || (k > s.ptr[r] && s.idx[k-1] >= s.idx[k]) {
					t.Fatalf("pass %d: row %d has column %d out of order or range", pass, r, j)
				}
				fromRows = append(fromRows, entry{r, j, alpha * s.val[k]})
			}
		}
		lo := int32(0)
		for j, hi := range c.end[:in] {
			for k := lo; k < hi; k++ {
				r := int(c.row[k])
				if r < 0 || r >= rows || (k > lo && c.row[k-1] >= c.row[k]) {
					t.Fatalf("pass %d: column %d has row %d out of order or range", pass, j, r)
				}
				fromCols = append(fromCols, entry{r, j, c.val[k]})
			}
			lo = hi
		}
		var dense []entry
		for r := range rows {
			for j, v := range ds.Row(r) {
				if v != 0 {
					dense = append(dense, entry{r, j, alpha * v})
				}
			}
		}
		byRow := func(a, b entry) int { return (a.r-b.r)*in + a.j - b.j }
		slices.SortFunc(fromCols, byRow)
		if !slices.Equal(fromRows, dense) || !slices.Equal(fromCols, dense) {
			t.Fatalf("pass %d: CSR or CSC entries differ from the dense rows", pass)
		}
	}
}

// TestSparseMatchesDense runs the same training, gradient and evaluation
// with the first layer forced onto the sparse kernel and onto gemm, on
// MNIST-like data (80% zeros). With the gonum backend the two paths perform
// the same floating-point operations in the same order and must agree bit
// for bit; with OpenBLAS, gemm sums in its own order and they must agree to
// rounding.
func TestSparseMatchesDense(t *testing.T) {
	for _, tc := range []struct {
		model   string
		in, out int
	}{
		{"logreg", 64, 10},
		{"2nn", 100, 10},
		{"mlp:37,5", 50, 3},
	} {
		s, _ := Parse(tc.model, tc.in, tc.out)
		ds := sparsify(randomDataset(203, tc.in, tc.out, 9), 0.8, 10)
		t.Run(s.String()+"/float32", func(t *testing.T) {
			start := make([]float32, s.NumParams())
			s.Init(start, 3)
			type result struct {
				grad, sgd10, sgdFull []float32
				loss, acc            float64
			}
			run := func(path inputPath, update updatePath) result {
				ws := NewWorkspace(s, 32)
				ws.core.path, ws.core.update = path, update
				var res result
				res.grad = make([]float32, len(start))
				ws.Gradient(start, res.grad, ds)
				res.sgd10 = slices.Clone(start)
				ws.SGD(res.sgd10, ds, 2, 10, 0.1, 7)
				res.sgdFull = slices.Clone(start)
				ws.SGD(res.sgdFull, ds, 2, 0, 0.1, 7)
				res.acc, res.loss = ws.Evaluate(res.sgd10, ds)
				return res
			}
			de := run(inputDense, updateAuto)
			for _, update := range []updatePath{updateScatter, updateColumns} {
				sp := run(inputSparse, update)
				if maxBatchExact {
					if !bitsEqual(sp.grad, de.grad) || !bitsEqual(sp.sgd10, de.sgd10) || !bitsEqual(sp.sgdFull, de.sgdFull) || sp.loss != de.loss || sp.acc != de.acc {
						t.Errorf("update path %d: sparse and dense first layers differ (gonum backend: they should agree bit for bit)", update)
					}
					continue
				}
				for name, pair := range map[string][2][]float32{"gradient": {sp.grad, de.grad}, "SGD B=10": {sp.sgd10, de.sgd10}, "SGD full batch": {sp.sgdFull, de.sgdFull}} {
					if d := relDiff(pair[0], pair[1]); d > 1e-4 {
						t.Errorf("update path %d, %s: sparse and dense first layers differ by relative norm %g", update, name, d)
					}
				}
			}
		})
		t.Run(s.String()+"/float64", func(t *testing.T) {
			p := initParams64(s, 3)
			var grads [2][]float64
			var losses [2]float64
			for i, path := range []inputPath{inputSparse, inputDense} {
				ws := NewWorkspaceOf[float64](s, 32)
				ws.path = path
				grads[i] = make([]float64, len(p))
				losses[i] = ws.Gradient(p, grads[i], ds)
			}
			var norm, diff float64
			for i := range grads[0] {
				norm += grads[1][i] * grads[1][i]
				diff += (grads[0][i] - grads[1][i]) * (grads[0][i] - grads[1][i])
			}
			if math.Sqrt(diff/norm) > 1e-13 || math.Abs(losses[0]-losses[1]) > 1e-13 {
				t.Errorf("float64 gradients differ by relative norm %g, losses %v and %v", math.Sqrt(diff/norm), losses[0], losses[1])
			}
		})
	}
}

// relDiff returns |a-b| / |b| in the Euclidean norm.
func relDiff(a, b []float32) float64 {
	var norm, diff float64
	for i := range a {
		norm += float64(b[i]) * float64(b[i])
		d := float64(a[i]) - float64(b[i])
		diff += d * d
	}
	return math.Sqrt(diff / norm)
}

// TestChooseSparse: the automatic choice follows the data's density (and
// with gonum is always sparse), and never depends on MaxBatch.
func TestChooseSparse(t *testing.T) {
	s, _ := Parse("logreg", 40, 3)
	dense := randomDataset(500, 40, 3, 1)
	sparse := sparsify(randomDataset(500, 40, 3, 1), 0.8, 2)
	for _, maxBatch := range []int{1, 64, 1000} {
		ws := NewWorkspaceOf[float32](s, maxBatch)
		if !ws.chooseSparse(sparse) {
			t.Errorf("maxBatch %d: 80%% zeros did not choose the sparse path", maxBatch)
		}
		if got, want := ws.chooseSparse(dense), sparseInputMax >= 1; got != want {
			t.Errorf("maxBatch %d: dense data chose sparse = %v, want %v with the %s backend", maxBatch, got, want, Backend)
		}
	}
}

// TestDots checks the float32 dot kernel (AVX2 on amd64) against dotGo bit
// for bit, and both against float64 sums, over lengths around the
// eight-lane blocks and output counts around its groups of four.
func TestDots(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 200, 257} {
		for _, nout := range []int{1, 3, 4, 5, 8, 9, 13} {
			ldw := n + r.IntN(3)
			a := make([]float32, n)
			for i := range a {
				a[i] = r.Float32()*2 - 1
			}
			w := make([]float32, max(0, (nout-1)*ldw+n))
			for i := range w {
				w[i] = r.Float32()*2 - 1
			}
			got := make([]float32, nout+1)
			got[nout] = 42 // past the end: must stay
			dots(got[:nout], a, w, ldw)
			if got[nout] != 42 {
				t.Fatalf("n=%d nout=%d: dots wrote past its output", n, nout)
			}
			for o := range nout {
				row := w[o*ldw : o*ldw+n]
				if want := dotGo(a, row); math.Float32bits(got[o]) != math.Float32bits(want) {
					t.Fatalf("n=%d nout=%d output %d: dots %v, dotGo %v", n, nout, o, got[o], want)
				}
				var exact float64
				for i := range n {
					exact += float64(a[i]) * float64(row[i])
				}
				if math.Abs(float64(got[o])-exact) > 1e-5*float64(n+1) {
					t.Fatalf("n=%d nout=%d output %d: dots %v, exact %v", n, nout, o, got[o], exact)
				}
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("dots with a short w did not panic")
		}
	}()
	dots(make([]float32, 3), make([]float32, 8), make([]float32, 20), 8)
}

// TestDots2 checks the two-vector kernel (AVX2 on amd64) against dots and
// dotGo for both vectors: bit for bit against dots, NaN payloads included
// (one case in three has NaNs of different payloads, a quarter of its
// values, and infinities, signed zeros and subnormals among ordinary
// values), and against dotGo likewise but for which NaN a NaN result
// carries.
func TestDots2(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	special := []float32{math.Float32frombits(0x7fc00001), math.Float32frombits(0x7fc00002), math.Float32frombits(0xffc00003),
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)), 0, math.Float32frombits(1), math.Float32frombits(0x807fffff)}
	value := func(odd bool) float32 {
		switch {
		case !odd:
		case r.IntN(4) == 0: // a NaN: a product of two NaNs shows whose payload wins
			return special[r.IntN(3)]
		case r.IntN(8) == 0:
			return special[3+r.IntN(len(special)-3)]
		}
		return r.Float32()*2 - 1
	}
	same := func(x, y float32, payload bool) bool {
		if !payload && x != x && y != y {
			return true
		}
		return math.Float32bits(x) == math.Float32bits(y)
	}
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 200, 257} {
		for _, nout := range []int{1, 3, 4, 5, 8, 9, 13} {
			odd := r.IntN(3) == 0
			ldw := n + r.IntN(3)
			var a [2][]float32
			for k := range a {
				a[k] = make([]float32, n)
				for i := range a[k] {
					a[k][i] = value(odd)
				}
			}
			w := make([]float32, max(0, (nout-1)*ldw+n))
			for i := range w {
				w[i] = value(odd)
			}
			var got [2][]float32
			for k := range got {
				got[k] = make([]float32, nout+1)
				got[k][nout] = 42 // past the end: must stay
			}
			dots2(got[0][:nout], got[1][:nout], a[0], a[1], w, ldw)
			for k := range got {
				if got[k][nout] != 42 {
					t.Fatalf("n=%d nout=%d: dots2 wrote past output %d", n, nout, k)
				}
				one := make([]float32, nout)
				dots(one, a[k], w, ldw)
				for o := range nout {
					if !same(got[k][o], one[o], true) {
						t.Fatalf("n=%d nout=%d vector %d output %d: dots2 %v (%#x), dots %v (%#x)", n, nout, k, o, got[k][o], math.Float32bits(got[k][o]), one[o], math.Float32bits(one[o]))
					}
					if want := dotGo(a[k], w[o*ldw:o*ldw+n]); !same(got[k][o], want, false) {
						t.Fatalf("n=%d nout=%d vector %d output %d: dots2 %v, dotGo %v", n, nout, k, o, got[k][o], want)
					}
				}
			}
		}
	}
	for _, c := range []struct {
		name        string
		out1, a1, w int
	}{{"short w", 3, 8, 20}, {"outputs of different lengths", 2, 8, 24}, {"vectors of different lengths", 3, 7, 24}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("dots2 with %s did not panic", c.name)
				}
			}()
			dots2(make([]float32, 3), make([]float32, c.out1), make([]float32, 8), make([]float32, c.a1), make([]float32, c.w), 8)
		}()
	}
}

// TestHiddenKernelsMatchGemm trains and differentiates with the layers
// after the first on the package's own kernels and on gemm: the results
// agree to rounding (the forward dot products sum in another order than
// gemm's, so not bit for bit).
func TestHiddenKernelsMatchGemm(t *testing.T) {
	s, _ := Parse("mlp:64,33", 80, 10)
	ds := sparsify(randomDataset(150, 80, 10, 12), 0.8, 13)
	start := make([]float32, s.NumParams())
	s.Init(start, 5)
	var grads, trained [2][]float32
	var losses [2]float64
	for i, hidden := range []hiddenPath{hiddenOwn, hiddenGemm} {
		ws := NewWorkspace(s, 32)
		ws.core.hidden = hidden
		grads[i] = make([]float32, len(start))
		losses[i] = ws.Gradient(start, grads[i], ds)
		trained[i] = slices.Clone(start)
		ws.SGD(trained[i], ds, 1, 10, 0.05, 2)
	}
	if d := relDiff(grads[0], grads[1]); d > 1e-5 || math.Abs(losses[0]-losses[1]) > 1e-6*losses[1] {
		t.Errorf("gradients differ by relative norm %g, losses %v and %v", d, losses[0], losses[1])
	}
	if d := relDiff(trained[0], trained[1]); d > 1e-4 {
		t.Errorf("trained parameters differ by relative norm %g", d)
	}

	p := initParams64(s, 5)
	var g64 [2][]float64
	for i, hidden := range []hiddenPath{hiddenOwn, hiddenGemm} {
		ws := NewWorkspaceOf[float64](s, 32)
		ws.hidden = hidden
		g64[i] = make([]float64, len(p))
		ws.Gradient(p, g64[i], ds)
	}
	var norm, diff float64
	for i := range g64[0] {
		norm += g64[1][i] * g64[1][i]
		diff += (g64[0][i] - g64[1][i]) * (g64[0][i] - g64[1][i])
	}
	if math.Sqrt(diff/norm) > 1e-13 {
		t.Errorf("float64 gradients differ by relative norm %g", math.Sqrt(diff/norm))
	}
}

// TestScatterSegs checks scatterSegs over a CSR batch (AVX2 on amd64,
// and the Go version) against accSegs over the batch's CSC form: the same
// terms in the same order per output element, so the same bits, for
// widths that exercise every block and the scalar lanes.
func TestScatterSegs(t *testing.T) {
	for _, n := range []int{1, 5, 8, 10, 17, 32, 63, 64, 65, 72, 200} {
		const rows, in, alpha = 11, 29, float32(-0.3)
		ds := sparsify(randomDataset(rows, in, 2, uint64(n)), 0.6, uint64(n))
		var s csr[float32]
		var c csc[float32]
		s.reserve(rows, in)
		for r := range rows {
			s.setRow(r, ds.Row(r), nil)
		}
		s.transposeTo(&c, rows, in, alpha)
		ldSrc := n + 3
		src := randomDataset(rows, ldSrc, 2, 7).X // rows × ldSrc, values in [0,1)
		out0 := randomDataset(in, n, 2, 8).X      // in × n
		viaCols, viaRows, viaGo := slices.Clone(out0), slices.Clone(out0), slices.Clone(out0)
		accSegs(viaCols, n, n, c.end[:in], c.val, c.row, rows, src, ldSrc)
		scatterSegs(viaRows, n, n, s.ptr[1:rows+1], s.val, alpha, s.idx, in, src, ldSrc)
		scatterSegsGo(viaGo, n, n, s.ptr[1:rows+1], s.val, alpha, s.idx, src, ldSrc)
		if !bitsEqual(viaRows, viaCols) || !bitsEqual(viaGo, viaCols) {
			t.Fatalf("n=%d: scatterSegs (%v), scatterSegsGo (%v) and accSegs over columns differ", n, bitsEqual(viaRows, viaCols), bitsEqual(viaGo, viaCols))
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("scatterSegs with too small an output did not panic")
		}
	}()
	scatterSegs(make([]float32, 20), 10, 10, []int32{1}, []float32{1}, 1, []int32{2}, 3, make([]float32, 10), 10)
}
