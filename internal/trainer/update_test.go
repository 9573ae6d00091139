package trainer

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gorilla/websocket"

	"fedgather/internal/data"
	"fedgather/internal/model"
	"fedgather/internal/wire"
)

// The update a trainer sends is, bit for bit, what the task asks for: for
// fedavg the trained weights minus the model it started from (Δw, computed
// here with a plain loop), for fedsgd −lr times the shard's gradient. A
// fake aggregator on loopback sends a welcome, a shard, a model and one
// task of each mode, and reads the updates back.
func TestUpdateIsWhatTheTaskAsksFor(t *testing.T) {
	const dim, classes, rows = 12, 3, 40
	spec, err := model.Parse("mlp:7", dim, classes)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	ds := &data.Dataset{X: make([]float32, rows*dim), Y: make([]int32, rows), Dim: dim, Classes: classes}
	for i := range ds.X {
		if rng.IntN(3) == 0 { // mostly zeros, as MNIST: the sparse first layer
			ds.X[i] = rng.Float32()
		}
	}
	for i := range ds.Y {
		ds.Y[i] = int32(rng.IntN(classes))
	}
	shard, err := data.EncodeShard(ds)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(shard)
	hash := hex.EncodeToString(sum[:])
	global := make([]float32, spec.NumParams())
	spec.Init(global, 7)

	tasks := []wire.Task{
		{ID: 1, Version: 1, Shard: hash, Rows: rows, Mode: "fedavg", Epochs: 2, Batch: 5, LR: 0.1, Seed: 3},
		{ID: 2, Version: 1, Shard: hash, Rows: rows, Mode: "fedsgd", Epochs: 1, LR: 0.5},
	}
	got := make(chan []float32, len(tasks))
	addr := fakeAggregator(t, func(ws *websocket.Conn, send sendFunc) {
		send(wire.TypeWelcome, wire.Welcome{ID: "t1", Model: wire.ModelSpec{Name: "mlp:7", Sizes: spec.Sizes}, Params: spec.NumParams(), MaxMessage: 1 << 20}, nil)
		send(wire.TypeShard, wire.Shard{Hash: hash, Rows: rows}, shard)
		send(wire.TypeModel, wire.Model{Version: 1, Params: spec.NumParams()}, wire.Float32Bytes(global))
		for _, task := range tasks {
			send(wire.TypeTask, task, nil)
			if !readUpdate(t, ws, task.ID, got) {
				return
			}
		}
	})
	_, ctx := startTrainer(t, addr, "update-test", slog.DiscardHandler)

	// What each update should be, computed apart from the trainer.
	ws := model.NewWorkspace(spec, 128)
	local := append([]float32(nil), global...)
	ws.SGD(local, ds, tasks[0].Epochs, tasks[0].Batch, tasks[0].LR, tasks[0].Seed)
	for i := range local {
		local[i] -= global[i]
	}
	grad := make([]float32, len(global))
	ws.Gradient(global, grad, ds)
	for i := range grad {
		grad[i] *= -tasks[1].LR
	}
	for i, want := range [][]float32{local, grad} {
		select {
		case u := <-got:
			if len(u) != len(want) {
				t.Fatalf("%s update has %d values, want %d", tasks[i].Mode, len(u), len(want))
			}
			for j := range u {
				if math.Float32bits(u[j]) != math.Float32bits(want[j]) {
					t.Fatalf("%s update value %d is %v, want %v", tasks[i].Mode, j, u[j], want[j])
				}
			}
		case <-ctx.Done():
			t.Fatalf("no %s update", tasks[i].Mode)
		}
	}
}

// readUpdate reads the trainer's frames up to its update for task id,
// skipping pulls, and passes the update's tensor to got. It reports false,
// failing the test, if the connection ends or another frame comes first.
func readUpdate(t *testing.T, ws *websocket.Conn, id int64, got chan<- []float32) bool {
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Errorf("task %d: %v", id, err)
			return false
		}
		f, err := wire.Decode(b)
		if err != nil {
			t.Errorf("task %d: %v", id, err)
			return false
		}
		switch f.Type {
		case wire.TypeUpdate:
			u := make([]float32, len(f.Payload)/4)
			copy(wire.Float32Bytes(u), f.Payload)
			got <- u
			return true
		case wire.TypePull:
		default:
			t.Errorf("task %d: the trainer sent a %s frame: %s", id, f.Type, f.Header)
			return false
		}
	}
}
