package model

import (
	"fmt"
	"sync"
	"testing"

	"fedgather/internal/data"
)

// mnistDir is where the repository keeps the real MNIST IDX files.
const mnistDir = "../../datasets/mnist"

var mnistOnce = sync.OnceValues(func() (*data.Dataset, *data.Dataset) {
	train, test, err := data.LoadMNIST(mnistDir)
	if err != nil {
		return nil, nil
	}
	return train, test
})

// loadMNIST returns the real MNIST train and test sets, loaded once per test
// binary, or skips tb if they cannot be loaded.
func loadMNIST(tb testing.TB) (train, test *data.Dataset) {
	tb.Helper()
	train, test = mnistOnce()
	if train == nil {
		_, _, err := data.LoadMNIST(mnistDir)
		tb.Skipf("real MNIST not loadable from %s: %v", mnistDir, err)
	}
	return train, test
}

// head returns the first n examples of ds as a Dataset sharing its memory.
func head(ds *data.Dataset, n int) *data.Dataset {
	n = min(n, ds.Len())
	return &data.Dataset{X: ds.X[:n*ds.Dim], Y: ds.Y[:n], Dim: ds.Dim, Classes: ds.Classes}
}

// BenchmarkTrain2NN measures one SGD epoch of the 2NN over 6,000 real MNIST
// examples; samples/s counts examples trained on per second.
func BenchmarkTrain2NN(b *testing.B) { benchTrain(b, "2nn") }

// BenchmarkTrainLogreg is BenchmarkTrain2NN for logistic regression.
func BenchmarkTrainLogreg(b *testing.B) { benchTrain(b, "logreg") }

func benchTrain(b *testing.B, name string) {
	train, _ := loadMNIST(b)
	ds := head(train, 6000)
	spec, err := Parse(name, ds.Dim, ds.Classes)
	if err != nil {
		b.Fatal(err)
	}
	for _, batch := range []int{10, 128} {
		b.Run(fmt.Sprintf("B=%d", batch), func(b *testing.B) {
			params := make([]float32, spec.NumParams())
			spec.Init(params, 1)
			ws := NewWorkspace(spec, batch)
			ws.SGD(params, ds, 1, batch, 0.01, 0) // warm up: grow every buffer once
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ { // b.Loop starts the timer on its first call
				ws.SGD(params, ds, 1, batch, 0.01, uint64(i))
			}
			b.ReportMetric(float64(b.N)*float64(ds.Len())/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// BenchmarkEvaluate2NN measures Evaluate of the 2NN over the first 1,000
// real MNIST test examples, 128 rows at a time, as an eval task does;
// examples/s counts examples evaluated per second.
func BenchmarkEvaluate2NN(b *testing.B) {
	_, test := loadMNIST(b)
	ds := head(test, 1000)
	spec, err := Parse("2nn", ds.Dim, ds.Classes)
	if err != nil {
		b.Fatal(err)
	}
	params := make([]float32, spec.NumParams())
	spec.Init(params, 1)
	ws := NewWorkspace(spec, 128)
	ws.Evaluate(params, ds) // warm up: grow every buffer once
	b.ReportAllocs()
	for b.Loop() {
		ws.Evaluate(params, ds)
	}
	b.ReportMetric(float64(b.N)*float64(ds.Len())/b.Elapsed().Seconds(), "examples/s")
}
