package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"fedgather/internal/data"
)

// randomDataset returns n examples with features uniform in [0,1) (the
// range of MNIST pixels) and uniform labels.
func randomDataset(n, dim, classes int, seed uint64) *data.Dataset {
	r := rand.New(rand.NewPCG(seed, 1))
	ds := &data.Dataset{X: make([]float32, n*dim), Y: make([]int32, n), Dim: dim, Classes: classes}
	for i := range ds.X {
		ds.X[i] = r.Float32()
	}
	for i := range ds.Y {
		ds.Y[i] = int32(r.IntN(classes))
	}
	return ds
}

// initParams64 returns s's Init vector widened to float64.
func initParams64(s Spec, seed uint64) []float64 {
	p32 := make([]float32, s.NumParams())
	s.Init(p32, seed)
	p := make([]float64, len(p32))
	for i, v := range p32 {
		p[i] = float64(v)
	}
	return p
}

// TestGradientCheck compares the analytic float64 gradient with central
// finite differences of the mean loss, for every weight and bias tensor.
// Small nets are checked at every parameter; the real 2nn at a random sample
// of each tensor (always including its first and last element).
func TestGradientCheck(t *testing.T) {
	const (
		h      = 1e-5 // finite-difference step
		maxRel = 1e-4 // allowed relative error
		guard  = 1e-6 // denominator floor: gradients below this are compared absolutely
	)
	tests := []struct {
		model           string
		inputs, classes int
		rows, maxBatch  int        // maxBatch < rows makes Gradient accumulate over chunks
		perTensor       int        // parameters checked per tensor; 0 means all
		zeros           float64    // fraction of input features set to zero
		path            inputPath  // how the first layer treats its inputs
		hidden          hiddenPath // how the later layers compute
	}{
		{model: "logreg", inputs: 784, classes: 10, rows: 5, maxBatch: 2},
		{model: "mlp:9,7", inputs: 12, classes: 4, rows: 6, maxBatch: 4},
		{model: "mlp:30,20,10", inputs: 16, classes: 5, rows: 3, maxBatch: 3},
		{model: "2nn", inputs: 12, classes: 3, rows: 4, maxBatch: 3, perTensor: 400},
		{model: "2nn", inputs: 784, classes: 10, rows: 5, maxBatch: 2, perTensor: 150},
		// MNIST-like inputs, 80% zeros, through the sparse first layer and
		// through gemm.
		{model: "logreg", inputs: 784, classes: 10, rows: 5, maxBatch: 2, zeros: 0.8, path: inputSparse},
		{model: "2nn", inputs: 784, classes: 10, rows: 5, maxBatch: 2, perTensor: 150, zeros: 0.8, path: inputSparse},
		{model: "2nn", inputs: 784, classes: 10, rows: 5, maxBatch: 3, perTensor: 150, zeros: 0.8, path: inputDense},
		{model: "mlp:9,7", inputs: 12, classes: 4, rows: 6, maxBatch: 4, zeros: 0.5, path: inputSparse},
		{model: "mlp:9,7", inputs: 12, classes: 4, rows: 6, maxBatch: 4, zeros: 0.5, path: inputDense},
		// The later layers on gemm and on the package's own kernels, whatever
		// the backend would choose.
		{model: "mlp:30,20,10", inputs: 16, classes: 5, rows: 7, maxBatch: 3, hidden: hiddenGemm},
		{model: "mlp:30,20,10", inputs: 16, classes: 5, rows: 7, maxBatch: 3, hidden: hiddenOwn},
		{model: "2nn", inputs: 784, classes: 10, rows: 5, maxBatch: 5, perTensor: 150, zeros: 0.8, path: inputSparse, hidden: hiddenGemm},
		{model: "2nn", inputs: 784, classes: 10, rows: 5, maxBatch: 5, perTensor: 150, zeros: 0.8, path: inputSparse, hidden: hiddenOwn},
	}
	for ti, tt := range tests {
		s, err := Parse(tt.model, tt.inputs, tt.classes)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("%s/zeros=%.1f/path=%d/hidden=%d", s, tt.zeros, tt.path, tt.hidden), func(t *testing.T) {
			ds := sparsify(randomDataset(tt.rows, tt.inputs, tt.classes, uint64(ti)+100), tt.zeros, uint64(ti))
			params := initParams64(s, uint64(ti)+7)
			ws := NewWorkspaceOf[float64](s, tt.maxBatch)
			ws.path = tt.path
			ws.hidden = tt.hidden
			grad := make([]float64, len(params))
			loss0 := ws.Gradient(params, grad, ds)
			if _, l := ws.Evaluate(params, ds); math.Abs(l-loss0) > 1e-12*math.Abs(l) {
				t.Fatalf("Gradient's loss %v differs from Evaluate's %v", loss0, l)
			}
			lossAt := func(i int, v float64) float64 {
				old := params[i]
				params[i] = v
				_, l := ws.Evaluate(params, ds)
				params[i] = old
				return l
			}
			pick := rand.New(rand.NewPCG(uint64(ti), 2))
			worst, checked, nonzero := 0.0, 0, 0
			for _, l := range s.Layers() {
				for _, tensor := range []struct {
					name   string
					off, n int
				}{
					{l.Name + ".weight", l.WOff, l.In * l.Out},
					{l.Name + ".bias", l.BOff, l.Out},
				} {
					idx := make([]int, 0, tensor.n)
					if tt.perTensor == 0 || tensor.n <= tt.perTensor {
						for i := range tensor.n {
							idx = append(idx, tensor.off+i)
						}
					} else {
						idx = append(idx, tensor.off, tensor.off+tensor.n-1)
						for len(idx) < tt.perTensor {
							idx = append(idx, tensor.off+pick.IntN(tensor.n))
						}
					}
					for _, i := range idx {
						num := (lossAt(i, params[i]+h) - lossAt(i, params[i]-h)) / (2 * h)
						ana := grad[i]
						rel := math.Abs(ana-num) / max(math.Abs(ana), math.Abs(num), guard)
						worst = max(worst, rel)
						checked++
						if ana != 0 {
							nonzero++
						}
						if !(rel < maxRel) {
							t.Errorf("%s[%d]: analytic %.10g, finite difference %.10g, relative error %.3g", tensor.name, i-tensor.off, ana, num, rel)
						}
					}
				}
			}
			if nonzero < checked/4 {
				t.Errorf("only %d of %d checked gradients are non-zero; the check is not exercising the model", nonzero, checked)
			}
			t.Logf("%d parameters checked (%d non-zero), worst relative error %.2g", checked, nonzero, worst)
		})
	}
}

// TestFloat32GradientMatchesFloat64 checks that the float32 instantiation
// used for training (with its assembly kernels) computes the same gradient
// as the checked float64 one, to float32 accuracy, on dense and on
// MNIST-like sparse inputs.
func TestFloat32GradientMatchesFloat64(t *testing.T) {
	for _, zeros := range []float64{0, 0.8} {
		t.Run(fmt.Sprintf("zeros=%.1f", zeros), func(t *testing.T) {
			float32MatchesFloat64(t, sparsify(randomDataset(37, 784, 10, 5), zeros, 6))
		})
	}
}

func float32MatchesFloat64(t *testing.T, ds *data.Dataset) {
	s, _ := Parse("2nn", 784, 10)
	p64 := initParams64(s, 3)
	p32 := make([]float32, len(p64))
	for i, v := range p64 {
		p32[i] = float32(v)
	}
	g64 := make([]float64, len(p64))
	g32 := make([]float32, len(p32))
	l64 := NewWorkspaceOf[float64](s, 16).Gradient(p64, g64, ds)
	l32 := NewWorkspace(s, 16).Gradient(p32, g32, ds)
	if math.Abs(l64-l32) > 1e-5*l64 {
		t.Errorf("loss float32 %v, float64 %v", l32, l64)
	}
	var norm, diff float64
	for i := range g64 {
		norm += g64[i] * g64[i]
		d := float64(g32[i]) - g64[i]
		diff += d * d
	}
	if rel := math.Sqrt(diff / norm); rel > 1e-5 {
		t.Errorf("float32 gradient differs from float64 by relative norm %g", rel)
	}
}
