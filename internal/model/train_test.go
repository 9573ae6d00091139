package model

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"fedgather/internal/data"
)

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestSGDDeterministic trains the same model twice from the same start with
// the same seed, in fresh and in reused workspaces, and expects bit-identical
// parameters and losses; a different seed must give a different result.
func TestSGDDeterministic(t *testing.T) {
	s, _ := Parse("mlp:32,16", 20, 4)
	ds := randomDataset(203, 20, 4, 11) // 203 = 20 batches of 10 and a partial one of 3
	start := make([]float32, s.NumParams())
	s.Init(start, 5)
	for _, batch := range []int{10, 64, 1000, 0} {
		t.Run(fmt.Sprintf("B=%d", batch), func(t *testing.T) {
			run := func(ws *Workspace, seed uint64) ([]float32, float64) {
				p := slices.Clone(start)
				loss := ws.SGD(p, ds, 3, batch, 0.05, seed)
				return p, loss
			}
			shared := NewWorkspace(s, 7)
			freshMaxBatch := 16
			if !maxBatchExact {
				freshMaxBatch = 7 // full-batch results depend on MaxBatch with this backend
			}
			a, la := run(NewWorkspace(s, freshMaxBatch), 99)
			b, lb := run(shared, 99)
			c, lc := run(shared, 99) // reused workspace: no state may leak between calls
			if !bitsEqual(a, b) || !bitsEqual(a, c) || la != lb || la != lc {
				t.Fatalf("same seed gave different results (losses %v %v %v)", la, lb, lc)
			}
			if bitsEqual(a, start) {
				t.Fatal("SGD did not change the parameters")
			}
			d, _ := run(shared, 100)
			if batch > 0 && batch < ds.Len() && bitsEqual(a, d) {
				t.Error("seeds 99 and 100 gave identical parameters; the shuffle ignores the seed")
			}
			if batch <= 0 && !bitsEqual(a, d) {
				t.Error("full-batch SGD depends on the seed; it should not")
			}
		})
	}
}

// TestFullBatchStepEqualsGradient: one full-batch SGD step with lr equals
// params - lr*Gradient(params), bit for bit in float32 (batch <= 0 takes
// exactly that path), and to rounding in float64 for the fused minibatch
// path with one batch holding the whole dataset.
func TestFullBatchStepEqualsGradient(t *testing.T) {
	s, _ := Parse("2nn", 30, 5)
	ds := randomDataset(57, 30, 5, 3)
	const lr = 0.3

	p0 := make([]float32, s.NumParams())
	s.Init(p0, 8)
	ws := NewWorkspace(s, 16) // 57 rows: Gradient accumulates four chunks
	g := make([]float32, len(p0))
	gl := ws.Gradient(p0, g, ds)
	p1 := slices.Clone(p0)
	sl := ws.SGD(p1, ds, 1, 0, lr, 1)
	if sl != gl {
		t.Errorf("SGD loss %v, Gradient loss %v", sl, gl)
	}
	for i := range p0 {
		if want := p0[i] - float32(lr*g[i]); math.Float32bits(p1[i]) != math.Float32bits(want) {
			t.Fatalf("param %d: SGD gives %v, params - lr*grad = %v", i, p1[i], want)
		}
	}

	q0 := initParams64(s, 8)
	ws64 := NewWorkspaceOf[float64](s, 16)
	g64 := make([]float64, len(q0))
	gl64 := ws64.Gradient(q0, g64, ds)
	for _, batch := range []int{0, ds.Len(), 10 * ds.Len()} {
		q1 := slices.Clone(q0)
		if l := ws64.SGD(q1, ds, 1, batch, lr, 1); math.Abs(l-gl64) > 1e-12*gl64 {
			t.Errorf("B=%d: SGD loss %v, Gradient loss %v", batch, l, gl64)
		}
		for i := range q0 {
			want := q0[i] - lr*g64[i]
			if math.Abs(q1[i]-want) > 1e-14+1e-12*math.Abs(lr*g64[i]) {
				t.Fatalf("B=%d param %d: SGD gives %v, params - lr*grad = %v", batch, i, q1[i], want)
			}
		}
	}
}

// TestSGDLearns checks that a few epochs on a linearly separable problem
// reach perfect training accuracy, for each model family and batch regime.
func TestSGDLearns(t *testing.T) {
	ds := separable(400, 8, 3, 4)
	for _, name := range []string{"logreg", "2nn", "mlp:16"} {
		for _, batch := range []int{1, 10, 0} {
			s, _ := Parse(name, ds.Dim, ds.Classes)
			p := make([]float32, s.NumParams())
			s.Init(p, 1)
			ws := NewWorkspace(s, 64)
			_, before := ws.Evaluate(p, ds)
			epochs, lr := 5, float32(0.1)
			if batch == 0 {
				epochs, lr = 200, 1
			}
			ws.SGD(p, ds, epochs, batch, lr, 2)
			acc, after := ws.Evaluate(p, ds)
			if acc < 0.99 || !(after < before/2) {
				t.Errorf("%s B=%d: accuracy %.3f, loss %.4f -> %.4f; want accuracy >= 0.99 and loss halved", name, batch, acc, before, after)
			}
		}
	}
}

// separable returns n examples in well separated clusters: an example of
// class c has features near 0.8 where j%classes == c and near 0.1 elsewhere.
func separable(n, dim, classes int, seed uint64) *data.Dataset {
	ds := randomDataset(n, dim, classes, seed)
	for i := range n {
		c := int(ds.Y[i])
		x := ds.X[i*dim : (i+1)*dim]
		for j := range x {
			centre := float32(0.1)
			if j%classes == c {
				centre = 0.8
			}
			x[j] = centre + 0.2*(x[j]-0.5)
		}
	}
	return ds
}

// TestEvaluateByHand checks accuracy and loss against values worked out by
// hand for logistic regression with chosen weights.
func TestEvaluateByHand(t *testing.T) {
	s, _ := Parse("logreg", 2, 2)
	// fc1.weight = [[1, 0], [0, 1]], fc1.bias = [0, 0.5]
	p := []float32{1, 0, 0, 1, 0, 0.5}
	ds := &data.Dataset{X: []float32{2, 0, 0, 0, 1, 1}, Y: []int32{0, 0, 1}, Dim: 2, Classes: 2}
	// logits: [2, 0.5] -> class 0 (right); [0, 0.5] -> class 1 (wrong); [1, 1.5] -> class 1 (right)
	wantLoss := (math.Log1p(math.Exp(-1.5)) + math.Log1p(math.Exp(0.5)) + math.Log1p(math.Exp(-0.5))) / 3
	for _, maxBatch := range []int{1, 2, 3, 100} {
		acc, loss := NewWorkspace(s, maxBatch).Evaluate(p, ds)
		if acc != 2.0/3 || math.Abs(loss-wantLoss) > 1e-6 {
			t.Errorf("maxBatch %d: Evaluate = %v, %v; want %v, %v", maxBatch, acc, loss, 2.0/3, wantLoss)
		}
	}
	// Huge logits must not overflow: softmax subtracts the maximum.
	big := []float32{1e4, 0, 0, 1e4, 0, 0}
	if _, loss := NewWorkspace(s, 4).Evaluate(big, ds); math.IsInf(loss, 0) || math.IsNaN(loss) {
		t.Errorf("loss with logits near 1e4 is %v", loss)
	}
}

func TestEmptyAndZeroEpochs(t *testing.T) {
	s, _ := Parse("logreg", 3, 2)
	p := make([]float32, s.NumParams())
	s.Init(p, 1)
	orig := slices.Clone(p)
	ws := NewWorkspace(s, 0)
	if ws.MaxBatch() != DefaultMaxBatch {
		t.Errorf("MaxBatch() = %d with maxBatch 0, want %d", ws.MaxBatch(), DefaultMaxBatch)
	}
	empty := &data.Dataset{Dim: 3, Classes: 2}
	if l := ws.SGD(p, empty, 3, 10, 0.1, 1); l != 0 || !slices.Equal(p, orig) {
		t.Errorf("SGD on an empty dataset: loss %v, params changed %v", l, !slices.Equal(p, orig))
	}
	ds := randomDataset(5, 3, 2, 1)
	if l := ws.SGD(p, ds, 0, 10, 0.1, 1); l != 0 || !slices.Equal(p, orig) {
		t.Errorf("SGD with 0 epochs: loss %v, params changed %v", l, !slices.Equal(p, orig))
	}
	g := []float32{1, 1, 1, 1, 1, 1, 1, 1}
	if l := ws.Gradient(p, g, empty); l != 0 || slices.ContainsFunc(g, func(v float32) bool { return v != 0 }) {
		t.Errorf("Gradient on an empty dataset: loss %v grad %v", l, g)
	}
	if acc, l := ws.Evaluate(p, empty); acc != 0 || l != 0 {
		t.Errorf("Evaluate on an empty dataset = %v, %v", acc, l)
	}
}

func TestPanicsOnMisuse(t *testing.T) {
	s, _ := Parse("logreg", 4, 3)
	ws := NewWorkspace(s, 8)
	good := make([]float32, s.NumParams())
	ds := randomDataset(6, 4, 3, 1)
	badLabel := randomDataset(6, 4, 3, 1)
	badLabel.Y[4] = 3
	tests := []struct {
		name string
		f    func()
		want string
	}{
		{"short params", func() { ws.SGD(good[1:], ds, 1, 2, 0.1, 1) }, "expected NumParams() = 15"},
		{"wrong dim", func() { ws.Evaluate(good, randomDataset(6, 5, 3, 1)) }, "expected the model's 4 inputs"},
		{"ragged X", func() { ws.Evaluate(good, &data.Dataset{X: make([]float32, 7), Y: make([]int32, 2), Dim: 4}) }, "expected 8"},
		{"label out of range", func() { ws.SGD(good, badLabel, 1, 2, 0.1, 1) }, "label 3, expected a label in [0, 3)"},
		{"short grad", func() { ws.Gradient(good, good[2:], ds) }, "grad has length 13"},
		{"no layers", func() { NewWorkspace(Spec{Name: "x", Sizes: []int{4}}, 1) }, "expected at least 2"},
		{"zero width", func() { NewWorkspace(Spec{Name: "x", Sizes: []int{4, 0, 3}}, 1) }, "expected a positive size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				msg, _ := r.(string)
				if r == nil || !strings.Contains(msg, tt.want) {
					t.Errorf("panic %v, want a message containing %q", r, tt.want)
				}
			}()
			tt.f()
		})
	}
}

// TestNoAllocations: after a first call has sized the buffers, SGD,
// Gradient and Evaluate allocate nothing, on either first-layer path.
func TestNoAllocations(t *testing.T) {
	s, _ := Parse("2nn", 50, 10)
	for _, paths := range []struct {
		in     inputPath
		hidden hiddenPath
	}{{inputSparse, hiddenOwn}, {inputDense, hiddenGemm}, {inputAuto, hiddenAuto}} {
		path := paths.in
		ds := sparsify(randomDataset(300, 50, 10, 2), 0.7, 1)
		p := make([]float32, s.NumParams())
		s.Init(p, 1)
		g := make([]float32, len(p))
		ws := NewWorkspace(s, 32)
		ws.core.path, ws.core.hidden = path, paths.hidden
		calls := map[string]func(){
			"SGD B=10":   func() { ws.SGD(p, ds, 1, 10, 0.01, 3) },
			"SGD B=128":  func() { ws.SGD(p, ds, 1, 128, 0.01, 3) },
			"SGD full":   func() { ws.SGD(p, ds, 2, 0, 0.01, 3) },
			"Gradient":   func() { ws.Gradient(p, g, ds) },
			"Evaluate":   func() { ws.Evaluate(p, ds) },
			"SGD64 B=10": nil,
		}
		p64 := initParams64(s, 1)
		ws64 := NewWorkspaceOf[float64](s, 32)
		ws64.path, ws64.hidden = path, paths.hidden
		calls["SGD64 B=10"] = func() { ws64.SGD(p64, ds, 1, 10, 0.01, 3) }
		for name, f := range calls {
			f() // size the buffers
			if n := testing.AllocsPerRun(3, f); n != 0 {
				t.Errorf("paths %v, %s: %v allocations per call, want 0", paths, name, n)
			}
		}
	}
}

// TestCentral2NNMNIST trains the paper's 2NN centrally on real MNIST for one
// epoch (B=10, lr=0.1) and expects at least 95% test accuracy.
func TestCentral2NNMNIST(t *testing.T) {
	if testing.Short() {
		t.Skip("trains on all of MNIST; skipped with -short")
	}
	train, test := loadMNIST(t)
	s, err := Parse("2nn", train.Dim, train.Classes)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float32, s.NumParams())
	s.Init(p, 1)
	ws := NewWorkspace(s, 1000)
	start := time.Now()
	trainLoss := ws.SGD(p, train, 1, 10, 0.1, 1)
	elapsed := time.Since(start)
	acc, testLoss := ws.Evaluate(p, test)
	rate := float64(train.Len()) / elapsed.Seconds()
	msg := fmt.Sprintf("2NN 1 epoch B=10 lr=0.1: train loss %.4f, test accuracy %.4f, test loss %.4f, %.0f samples/s (%v for %d examples)",
		trainLoss, acc, testLoss, rate, elapsed.Round(time.Millisecond), train.Len())
	t.Log(msg)
	if testing.Verbose() {
		fmt.Println(msg)
	}
	if acc < 0.95 {
		t.Errorf("test accuracy %.4f after one epoch, want >= 0.95", acc)
	}
}

// TestResultsIndependentOfMaxBatch: maxBatch only sets how many rows are
// processed at a time; losses, gradients and trained parameters are bit for
// bit the same whatever it is, so trainers configured differently agree.
// With OpenBLAS (maxBatchExact false) that holds for minibatch SGD, and the
// rest agrees to rounding.
func TestResultsIndependentOfMaxBatch(t *testing.T) {
	s, _ := Parse("mlp:40,20", 30, 6)
	for _, zeros := range []float64{0, 0.8} {
		ds := sparsify(randomDataset(101, 30, 6, 21), zeros, 22)
		p := make([]float32, s.NumParams())
		s.Init(p, 4)
		var refGrad, refFull, refMini []float32
		var refLoss, refEval float64
		for i, maxBatch := range []int{1, 7, 64, 101, 500} {
			ws := NewWorkspace(s, maxBatch)
			g := make([]float32, len(p))
			loss := ws.Gradient(p, g, ds)
			full := slices.Clone(p)
			ws.SGD(full, ds, 2, 0, 0.1, 1)
			mini := slices.Clone(p)
			ws.SGD(mini, ds, 2, 10, 0.1, 1)
			_, eval := ws.Evaluate(p, ds)
			if i == 0 {
				refGrad, refFull, refMini, refLoss, refEval = g, full, mini, loss, eval
				continue
			}
			if !bitsEqual(mini, refMini) {
				t.Errorf("zeros %.1f: maxBatch %d changes minibatch SGD", zeros, maxBatch)
			}
			if maxBatchExact {
				if !bitsEqual(g, refGrad) || loss != refLoss || eval != refEval || !bitsEqual(full, refFull) {
					t.Errorf("zeros %.1f: maxBatch %d gives results different from maxBatch 1", zeros, maxBatch)
				}
				continue
			}
			if d := max(relDiff(g, refGrad), relDiff(full, refFull)); d > 1e-5 || math.Abs(loss-refLoss) > 1e-6*refLoss || math.Abs(eval-refEval) > 1e-6*refEval {
				t.Errorf("zeros %.1f: maxBatch %d: results differ from maxBatch 1 by more than rounding (relative %g)", zeros, maxBatch, d)
			}
		}
	}
}
