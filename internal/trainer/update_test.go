package trainer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

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
	up := websocket.Upgrader{}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		if _, _, err := ws.ReadMessage(); err != nil { // hello
			return
		}
		send := func(typ wire.Type, h any, payload []byte) {
			b, err := wire.Encode(typ, h, payload)
			if err == nil {
				err = ws.WriteMessage(websocket.BinaryMessage, b)
			}
			if err != nil {
				t.Error(err)
			}
		}
		send(wire.TypeWelcome, wire.Welcome{ID: "t1", Model: wire.ModelSpec{Name: "mlp:7", Sizes: spec.Sizes}, Params: spec.NumParams(), MaxMessage: 1 << 20}, nil)
		send(wire.TypeShard, wire.Shard{Hash: hash, Rows: rows}, shard)
		send(wire.TypeModel, wire.Model{Version: 1, Params: spec.NumParams()}, wire.Float32Bytes(global))
		for _, task := range tasks {
			send(wire.TypeTask, task, nil)
			for {
				_, b, err := ws.ReadMessage()
				if err != nil {
					t.Errorf("task %d: %v", task.ID, err)
					return
				}
				f, err := wire.Decode(b)
				if err != nil {
					t.Errorf("task %d: %v", task.ID, err)
					return
				}
				if f.Type == wire.TypeUpdate {
					u := make([]float32, len(f.Payload)/4)
					copy(wire.Float32Bytes(u), f.Payload)
					got <- u
					break
				}
				if f.Type != wire.TypePull {
					t.Errorf("task %d: the trainer sent a %s frame: %s", task.ID, f.Type, f.Header)
					return
				}
			}
		}
		_, _, _ = ws.ReadMessage() // until the trainer hangs up
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	tr, err := New(Config{Aggregator: ln.Addr().String(), Name: "update-test", Report: time.Hour, MinBackoff: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	defer func() { cancel(); <-done }()

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
