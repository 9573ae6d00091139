package model_test

import (
	"fmt"

	"fedgather/internal/data"
	"fedgather/internal/model"
)

// Example builds the FedAvg paper's 2NN, shows its PyTorch-compatible
// parameter layout, and trains a small MLP on a toy two-class problem.
func Example() {
	spec, err := model.Parse("2nn", 784, 10)
	if err != nil {
		panic(err)
	}
	fmt.Println(spec, "has", spec.NumParams(), "parameters")
	for _, l := range spec.Layers() {
		fmt.Printf("%s.weight [%d, %d] at %d, %s.bias [%d] at %d\n", l.Name, l.Out, l.In, l.WOff, l.Name, l.Out, l.BOff)
	}

	// Two classes in two features: class 1 when x0 > x1.
	ds := &data.Dataset{Dim: 2, Classes: 2}
	for i := range 200 {
		x0, x1 := float32(i%10)/10, float32(i/10%10)/10+0.05
		label := int32(0)
		if x0 > x1 {
			label = 1
		}
		ds.X = append(ds.X, x0, x1)
		ds.Y = append(ds.Y, label)
	}
	small, _ := model.Parse("mlp:8", ds.Dim, ds.Classes)
	params := make([]float32, small.NumParams())
	small.Init(params, 1)
	ws := model.NewWorkspace(small, 64)
	ws.SGD(params, ds, 100, 10, 0.5, 1)
	acc, _ := ws.Evaluate(params, ds)
	fmt.Printf("%s training accuracy %.2f\n", small, acc)

	// Output:
	// 2nn(784-200-200-10) has 199210 parameters
	// fc1.weight [200, 784] at 0, fc1.bias [200] at 156800
	// fc2.weight [200, 200] at 157000, fc2.bias [200] at 197000
	// fc3.weight [10, 200] at 197200, fc3.bias [10] at 199200
	// mlp:8(2-8-2) training accuracy 1.00
}

// ExampleWorkspace_Gradient computes a FedSGD client gradient: the gradient
// of the mean loss over the client's whole shard.
func ExampleWorkspace_Gradient() {
	spec, _ := model.Parse("logreg", 3, 2)
	// fc1.weight [2, 3] then fc1.bias [2], all zero: both classes equally likely.
	params := make([]float32, spec.NumParams())
	shard := &data.Dataset{X: []float32{1, 0, 0, 0, 1, 0}, Y: []int32{0, 1}, Dim: 3, Classes: 2}
	grad := make([]float32, spec.NumParams())
	loss := model.NewWorkspace(spec, 0).Gradient(params, grad, shard)
	fmt.Printf("loss %.4f (ln 2)\ngrad %v\n", loss, grad)
	// Output:
	// loss 0.6931 (ln 2)
	// grad [-0.25 0.25 0 0.25 -0.25 0 0 0]
}
