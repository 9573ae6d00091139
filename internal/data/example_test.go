package data_test

import (
	"fmt"

	"fedgather/internal/data"
)

func ExampleParsePartition() {
	for _, spec := range []string{"iid", "pathological", "dirichlet:0.5", "dirichlet:-1"} {
		p, err := data.ParsePartition(spec)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("%s -> kind %q, alpha %v\n", p, p.Kind, p.Alpha)
	}
	// Output:
	// iid -> kind "iid", alpha 0
	// pathological -> kind "pathological", alpha 0
	// dirichlet:0.5 -> kind "dirichlet", alpha 0.5
	// error: partition "dirichlet:-1": expected alpha > 0 and finite, got -1
}

func ExamplePartition_Split() {
	labels := []int32{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}
	p, _ := data.ParsePartition("pathological")
	clients, err := p.Split(labels, 4, 3, 7)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, idx := range clients {
		fmt.Println(len(idx), "examples")
	}
	// Output:
	// 4 examples
	// 4 examples
	// 4 examples
}

func ExampleEncodeShard() {
	d := &data.Dataset{
		X:       []float32{0, 0.5, 1, 0.25, 0.75, 0},
		Y:       []int32{1, 0},
		Dim:     3,
		Classes: 2,
	}
	b, err := data.EncodeShard(d)
	if err != nil {
		fmt.Println(err)
		return
	}
	back, err := data.DecodeShard(b, 3, 2, 100)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(back.Len(), back.Y, back.Row(1))

	_, err = data.DecodeShard(b, 3, 2, 1)
	fmt.Println(err)
	// Output:
	// 2 [1 0] [0.25 0.75 0]
	// decode shard: record batch 0: expected at most 1 rows in the shard, got 2 after 0 earlier rows
}
