package export_test

import (
	"bytes"
	"fmt"

	"fedgather/internal/export"
	"fedgather/internal/model"
)

// A model written as safetensors holds PyTorch nn.Linear tensors and reads
// back bit for bit.
func ExampleWriteSafetensors() {
	spec, _ := model.Parse("mlp:3", 4, 2)
	params := make([]float32, spec.NumParams())
	spec.Init(params, 1)

	var buf bytes.Buffer
	if err := export.WriteSafetensors(&buf, spec, params, export.Meta{Version: 5, Accuracy: 0.5}); err != nil {
		panic(err)
	}
	f, err := export.DecodeSafetensors(bytes.NewReader(buf.Bytes()))
	if err != nil {
		panic(err)
	}
	for _, t := range f.Tensors {
		fmt.Println(t.Name, t.DType, t.Shape, t.Begin, t.End)
	}
	back, err := f.Params(spec)
	fmt.Println(len(back), back[0] == params[0], f.Meta.Model, f.Meta.Version, f.Meta.Accuracy, err)
	// Output:
	// fc1.weight F32 [3 4] 0 48
	// fc1.bias F32 [3] 48 60
	// fc2.weight F32 [2 3] 60 84
	// fc2.bias F32 [2] 84 92
	// 23 true mlp:3 5 0.5 <nil>
}
