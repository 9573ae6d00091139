package coord_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/coord"
	"fedgather/internal/wire"
)

// modelReader is a protocol-level trainer for TestRecycledModelBuffers: it
// answers every task with a zero update and checks that every model frame
// it reads holds version+1 in each parameter. With hold, it stops after
// the first 64 KiB of its first model until hold is closed, so that the
// hub's writer is still sending that model, blocked on a full socket,
// after the round closed and while the following rounds run.
func modelReader(ctx context.Context, url, name string, params int, pulled chan<- struct{}, hold <-chan struct{}, models chan<- int) error {
	ws, send, err := dialProtocol(ctx, url)
	if err != nil {
		return err
	}
	defer ws.Close()
	if err := send(wire.TypeHello, wire.Hello{Name: name}, nil); err != nil {
		return err
	}
	zero := make([]byte, 4*params)
	piece := make([]byte, 64<<10)
	for {
		_, r, err := ws.NextReader()
		if err != nil {
			return err
		}
		f, err := wire.ReadHead(r, nil)
		if err != nil {
			return err
		}
		switch f.Type {
		case wire.TypeWelcome:
			if err = send(wire.TypePull, wire.Pull{}, nil); err == nil {
				close(pulled)
			}
		case wire.TypeModel:
			var m wire.Model
			if err := f.Parse(&m); err != nil {
				return err
			}
			want := math.Float32bits(float32(m.Version + 1))
			for at := 0; at < 4*params; {
				if hold != nil && at > 0 {
					select {
					case <-hold:
					case <-ctx.Done():
						return ctx.Err()
					}
					hold = nil
				}
				n, err := io.ReadFull(r, piece[:min(len(piece), 4*params-at)])
				if err != nil {
					return err
				}
				for i := 0; i < n; i += 4 {
					if got := binary.LittleEndian.Uint32(piece[i:]); got != want {
						return fmt.Errorf("%s: model version %d holds %v at parameter %d, want %v",
							name, m.Version, math.Float32frombits(got), (at+i)/4, float32(m.Version+1))
					}
				}
				at += n
			}
			models <- m.Version
		case wire.TypeTask:
			var t wire.Task
			if err = f.Parse(&t); err == nil {
				err = send(wire.TypeUpdate, wire.Update{Task: t.ID, Round: t.Round, Version: t.Version, Client: t.Client, Samples: t.Rows, Loss: 1}, zero)
			}
			if err == nil {
				err = send(wire.TypePull, wire.Pull{}, nil)
			}
		case wire.TypeDone:
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	}
}

// TestRecycledModelBuffers: the hub reuses the buffers of its rounds'
// outgoing models, yet a model still being written to a slow trainer after
// its round closed is never overwritten by a later round's weights, and
// the caller's weights may change as soon as RunRound returns.
func TestRecycledModelBuffers(t *testing.T) {
	const params = 4 << 20 // 16 MiB: more than loopback's socket buffers hold
	hub, err := coord.New(coord.Config{
		Model:  wire.ModelSpec{Name: "mlp", Sizes: []int{20, 3}},
		Params: params,
		Shards: makeShards(t, 2, 10, 0),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The held trainer sends nothing, not even pongs, until released.
		PingPeriod: time.Minute, PongWait: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hub)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fast, slow := make(chan int, 100), make(chan int, 100)
	errs := make(chan error, 2)
	// Both trainers are idle before round 0, so that each takes one of
	// its two tasks: the fast one first.
	fastIdle, slowIdle := make(chan struct{}), make(chan struct{})
	go func() { errs <- modelReader(ctx, srv.URL, "fast", params, fastIdle, nil, fast) }()
	<-fastIdle
	hold := make(chan struct{})
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	defer release()
	go func() { errs <- modelReader(ctx, srv.URL, "slow", params, slowIdle, hold, slow) }()
	<-slowIdle

	const rounds = 8
	w := make([]float32, params)
	mean := make([]float32, params)
	for r := range rounds {
		for i := range w {
			w[i] = float32(r + 1)
		}
		// One of two results is enough: the fast trainer closes each round
		// while the slow one is still reading the model.
		res, err := hub.RunRound(ctx, coord.RoundSpec{Round: r, Version: r, Model: w, Mean: mean, Clients: []int{0, 1}, Quorum: 1,
			Mode: "fedavg", Epochs: 1, Batch: 1, LR: 0.1, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		if res.Updates != 1 || len(res.Mean) == 0 || &res.Mean[0] != &mean[0] {
			t.Fatalf("round %d: %d updates, a mean of %d values (want it in the caller's buffer)", r, res.Updates, len(res.Mean))
		}
		clear(w) // the hub holds its own copy
	}
	release()
	hub.Finish("test over")
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(fast)
	close(slow)
	var got []int
	for v := range slow {
		got = append(got, v)
	}
	// The slow trainer's model was still being written while the later
	// rounds ran (modelReader checked that it arrived whole).
	if len(got) != 1 || got[0] != 0 {
		t.Fatalf("the slow trainer read models %v, want version 0 only", got)
	}
	n := 0
	for range fast {
		n++
	}
	if n < rounds-1 {
		t.Fatalf("the fast trainer read %d models in %d rounds", n, rounds)
	}
	t.Logf("slow trainer read versions %v; fast trainer %d models", got, n)
}

// TestHelloShardsAreNotSentAgain: a trainer that lists shards in its hello
// (as after a reconnect) is sent none of them again, training or eval.
func TestHelloShardsAreNotSentAgain(t *testing.T) {
	const params = logregParams
	train, eval := makeShards(t, 4, 3, 0), makeShards(t, 2, 3, 100)
	hub, srv := newLogregHub(t, coord.Config{Shards: train, EvalShards: eval})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var hashes []string
	for _, s := range append(train, eval...) {
		hashes = append(hashes, s.Hash)
	}
	ws, send, err := dialProtocol(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := send(wire.TypeHello, wire.Hello{Name: "cached", Shards: hashes}, nil); err != nil {
		t.Fatal(err)
	}
	// The client reports its shard count and any error when its socket
	// closes, not through t, so that it cannot outlive the test. Once the
	// test has closed the socket, a failed write (the pull that follows
	// the last update) is no error.
	type outcome struct {
		shards int
		err    error
	}
	done := make(chan outcome, 1)
	var closing atomic.Bool
	go func() {
		var o outcome
		defer func() { done <- o }()
		zero := make([]byte, 4*params)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			f, err := wire.Decode(b)
			if err != nil {
				o.err = err
				return
			}
			switch f.Type {
			case wire.TypeWelcome:
				err = send(wire.TypePull, wire.Pull{}, nil)
			case wire.TypeShard:
				o.shards++
			case wire.TypeTask:
				var task wire.Task
				if err = f.Parse(&task); err != nil {
					break
				}
				u := wire.Update{Task: task.ID, Round: task.Round, Version: task.Version, Client: task.Client, Samples: task.Rows, Loss: 1}
				if task.Mode == "eval" {
					err = send(wire.TypeUpdate, u, nil)
				} else {
					err = send(wire.TypeUpdate, u, zero)
				}
				if err == nil {
					err = send(wire.TypePull, wire.Pull{}, nil)
				}
			}
			if err != nil {
				if !closing.Load() {
					o.err = err
				}
				return
			}
		}
	}()
	if err := hub.WaitTrainers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	res, err := hub.RunRound(ctx, coord.RoundSpec{Model: make([]float32, params), Clients: []int{0, 1, 2, 3},
		Mode: "fedavg", Epochs: 1, Batch: 1, LR: 0.1, Evaluate: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Updates != 4 || res.EvalSamples != 2*3 {
		t.Fatalf("round gathered %d updates and %d eval samples, want 4 and 6", res.Updates, res.EvalSamples)
	}
	closing.Store(true)
	_ = ws.Close()
	o := <-done
	if o.err != nil {
		t.Error(o.err)
	}
	if o.shards != 0 {
		t.Errorf("the hub sent %d shards to a trainer whose hello listed them all", o.shards)
	}
}

// dialProtocol connects a protocol-level trainer to the hub served at url,
// closes the connection when ctx ends, and returns a function that sends
// one frame as one binary message.
func dialProtocol(ctx context.Context, url string) (*websocket.Conn, func(wire.Type, any, []byte) error, error) {
	ws, err := dialWS(ctx, url, 0)
	if err != nil {
		return nil, nil, err
	}
	return ws, func(t wire.Type, h any, p []byte) error { return sendFrame(ws, t, h, p) }, nil
}

// dialWS opens a test trainer's websocket to the hub served at url, closed
// with ctx; writeBuffer is gorilla's write buffer size, 0 for its default.
func dialWS(ctx context.Context, url string, writeBuffer int) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, WriteBufferSize: writeBuffer}
	ws, _, err := d.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http"), nil)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { _ = ws.Close() })
	return ws, nil
}

// sendFrame writes one frame to ws as one message.
func sendFrame(ws *websocket.Conn, t wire.Type, h any, payload []byte) error {
	w, err := startFrame(ws, t, h, payload)
	if err != nil {
		return err
	}
	return w.Close()
}

// startFrame writes one frame to ws but leaves its message open, the end
// of it unsent, until the returned writer is closed.
func startFrame(ws *websocket.Conn, t wire.Type, h any, payload []byte) (io.WriteCloser, error) {
	w, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		return nil, err
	}
	return w, wire.Write(w, t, h, payload)
}
