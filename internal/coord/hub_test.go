package coord_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/coord"
	"fedgather/internal/data"
	"fedgather/internal/model"
	"fedgather/internal/trainer"
	"fedgather/internal/wire"
)

// fixture is a hub serving K small synthetic client shards over a real
// loopback websocket server, with in-process trainers (run under -race).
type fixture struct {
	hub    *coord.Hub
	srv    *httptest.Server
	spec   model.Spec
	params []float32
	k      int
}

func newFixture(t *testing.T, k int, cfg coord.Config) *fixture {
	return newSizedFixture(t, k, 50, "mlp:16", cfg)
}

func newSizedFixture(t *testing.T, k, rows int, arch string, cfg coord.Config) *fixture {
	t.Helper()
	spec, err := model.Parse(arch, 20, 3)
	if err != nil {
		t.Fatal(err)
	}
	shards := makeShards(t, k, rows, 0)
	cfg.Model = wire.ModelSpec{Name: spec.Name, Sizes: spec.Sizes}
	cfg.Params = spec.NumParams()
	cfg.Shards = shards
	if cfg.EvalShards == nil {
		cfg.EvalShards = shards
	}
	hub, srv := serveHub(t, cfg)
	p := make([]float32, spec.NumParams())
	spec.Init(p, 1)
	return &fixture{hub: hub, srv: srv, spec: spec, params: p, k: k}
}

// makeShards encodes k synthetic shards of rows examples (20 features, 3
// classes); shards with another offset hold other examples.
func makeShards(t *testing.T, k, rows, offset int) []coord.Shard {
	t.Helper()
	shards := make([]coord.Shard, k)
	for c := range shards {
		ds := &data.Dataset{Dim: 20, Classes: 3}
		for i := offset; i < offset+rows; i++ {
			y := int32((c + i) % 3)
			for d := 0; d < 20; d++ {
				ds.X = append(ds.X, float32(math.Sin(float64(d*(int(y)+1)+i))))
			}
			ds.Y = append(ds.Y, y)
		}
		b, err := data.EncodeShard(ds)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		shards[c] = coord.Shard{Hash: hex.EncodeToString(sum[:]), Rows: rows, Bytes: b}
	}
	return shards
}

// logregParams is the size of logistic regression on makeShards' 20
// features and 3 classes.
const logregParams = 20*3 + 3

// newLogregHub serves a hub for logistic regression on makeShards' data,
// with cfg's shards and settings, for protocol-level test trainers.
func newLogregHub(t *testing.T, cfg coord.Config) (*coord.Hub, *httptest.Server) {
	t.Helper()
	cfg.Model = wire.ModelSpec{Name: "logreg", Sizes: []int{20, 3}}
	cfg.Params = logregParams
	return serveHub(t, cfg)
}

// serveHub makes a hub of cfg, its log discarded, and serves it on a
// loopback test server closed with the test.
func serveHub(t *testing.T, cfg coord.Config) (*coord.Hub, *httptest.Server) {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, err := coord.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hub)
	t.Cleanup(srv.Close)
	return hub, srv
}

func (f *fixture) startTrainer(t *testing.T, ctx context.Context, name string, slowdown float64) (done chan error) {
	t.Helper()
	tr, err := trainer.New(trainer.Config{
		Aggregator: f.srv.URL, Name: name, Slowdown: slowdown,
		MaxBackoff: 200 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	return done
}

func (f *fixture) round(t *testing.T, r int, clients []int) *coord.RoundResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := f.hub.RunRound(ctx, coord.RoundSpec{
		Round: r, Version: r, Model: f.params, Clients: clients,
		Mode: "fedavg", Epochs: 1, Batch: 5, LR: 0.1, Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRoundsWithTrainersJoiningAndLeaving(t *testing.T) {
	f := newFixture(t, 12, coord.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var dones []chan error
	for i := 0; i < 3; i++ {
		dones = append(dones, f.startTrainer(t, ctx, fmt.Sprintf("t%d", i), 1))
	}
	if err := f.hub.WaitTrainers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	all := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	var first []float32
	for r := 0; r < 3; r++ {
		res := f.round(t, r, all)
		if res.Updates != 12 || res.Completed != 12 || res.Samples != 600 {
			t.Fatalf("round %d: %+v", r, res)
		}
		if r == 0 {
			first = res.Mean
		}
	}
	// A second hub-level run of round 0 with one trainer gives the same mean.
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	g := newFixture(t, 12, coord.Config{})
	g.startTrainer(t, ctx1, "solo", 1)
	if err := g.hub.WaitTrainers(ctx1, 1); err != nil {
		t.Fatal(err)
	}
	res := g.round(t, 0, all)
	for i := range first {
		if math.Float32bits(first[i]) != math.Float32bits(res.Mean[i]) {
			t.Fatalf("mean[%d] with 3 trainers %v, with 1 trainer %v", i, first[i], res.Mean[i])
		}
	}
	s := f.hub.Snapshot()
	if s.TasksCompleted != 36 || s.ShardsSent > 36 || s.ModelsSent > 9 {
		t.Fatalf("stats %+v: want 36 completed, each shard at most once per trainer, one model per trainer per round", s)
	}
	cancel()
	for _, d := range dones {
		if err := <-d; err != nil {
			t.Fatalf("trainer ended with %v", err)
		}
	}
}

func TestTrainerStoppedMidRoundTaskRequeued(t *testing.T) {
	// Big enough shards that the victim, 1000x slowed, holds its task for
	// seconds; a long deadline, so that its task is not re-issued before
	// the victim stops (this test is about requeueing on disconnect).
	f := newSizedFixture(t, 8, 2000, "mlp:64", coord.Config{TaskDeadline: time.Minute})
	slowCtx, stopSlow := context.WithCancel(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.startTrainer(t, slowCtx, "victim", 1000)
	if err := f.hub.WaitTrainers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.startTrainer(t, ctx, "rescuer", 1)
		time.Sleep(100 * time.Millisecond)
		once.Do(stopSlow)
	}()
	res := f.round(t, 0, []int{0, 1, 2, 3, 4, 5, 6, 7})
	once.Do(stopSlow)
	if res.Updates != 8 {
		t.Fatalf("round folded %d updates, want 8", res.Updates)
	}
	if res.Requeued == 0 || res.Tasks["victim"] != 0 {
		t.Fatalf("requeued %d, tasks %v: want the stopped victim's task requeued and done by the rescuer", res.Requeued, res.Tasks)
	}
	if res.Tasks["rescuer"] != 8 {
		t.Fatalf("tasks %v: want the rescuer to do the victim's work", res.Tasks)
	}
}

func TestFinishTellsTrainersToExit(t *testing.T) {
	f := newFixture(t, 2, coord.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := f.startTrainer(t, ctx, "t", 1)
	if err := f.hub.WaitTrainers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.hub.Finish("test over")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("trainer ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("trainer did not exit after Finish")
	}
	// One that connects afterwards is told at once, too.
	if err := <-f.startTrainer(t, ctx, "late", 1); err != nil {
		t.Fatalf("late trainer ended with %v", err)
	}
}

// GoAway closes every connection with close code 1001 and its reason, and
// so every one made afterwards, just after welcome; trainers are not told
// the job is done, and keep reconnecting.
func TestGoAwayClosesConnectionsAndTrainersReconnect(t *testing.T) {
	f := newFixture(t, 2, coord.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func() *websocket.Conn {
		ws, err := dialWS(ctx, f.srv.URL+"/v1/train", 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ws.Close() })
		if err := sendFrame(ws, wire.TypeHello, wire.Hello{Name: "raw"}, nil); err != nil {
			t.Fatal(err)
		}
		return ws
	}
	// closedAway reads until the connection ends and checks how.
	closedAway := func(ws *websocket.Conn, what string) {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var types []wire.Type
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "test stopping" {
					t.Fatalf("%s: connection ended with %v after %v; want close 1001 \"test stopping\"", what, err, types)
				}
				break
			}
			fr, err := wire.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if fr.Type == wire.TypeDone {
				t.Fatalf("%s: got done; GoAway must not say the job is done", what)
			}
			types = append(types, fr.Type)
		}
		if len(types) == 0 || types[0] != wire.TypeWelcome {
			t.Fatalf("%s: frames before the close %v; want welcome first", what, types)
		}
	}
	done := f.startTrainer(t, ctx, "t", 1)
	early := dial()
	if err := f.hub.WaitTrainers(ctx, 2); err != nil {
		t.Fatal(err)
	}
	joined := f.hub.Snapshot().TrainersJoined
	f.hub.GoAway("test stopping")
	closedAway(early, "connected before")
	closedAway(dial(), "connected after")
	// The real trainer is still running (reconnecting), not done.
	select {
	case err := <-done:
		t.Fatalf("trainer ended (%v) after GoAway; want it to keep reconnecting", err)
	case <-time.After(time.Second):
	}
	if n := f.hub.Trainers(); n > 1 {
		t.Errorf("%d trainers still connected a second after GoAway", n)
	}
	// Connections turned away are not counted as trainers joining.
	if got := f.hub.Snapshot().TrainersJoined; got != joined {
		t.Errorf("trainers joined: %d before GoAway, %d after; want no change", joined, got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("trainer ended with %v when stopped", err)
	}
}

// A trainer caught writing an update when the aggregator goes away is not
// cut off: the hub reads on until the trainer's Close (the closing
// handshake), so the update arrives whole and the trainer reads the reason.
func TestGoAwayCompletesTheClosingHandshake(t *testing.T) {
	f := newFixture(t, 2, coord.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, f.srv.URL+"/v1/train", 64) // frames leave as they fill
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := sendFrame(ws, wire.TypeHello, wire.Hello{Name: "writing"}, nil); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, b, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	} else if fr, err := wire.Decode(b); err != nil || fr.Type != wire.TypeWelcome {
		t.Fatalf("first frame %v (%v); want welcome", fr.Type, err)
	}

	// All of an update but its last (empty) websocket frame.
	w, err := startFrame(ws, wire.TypeUpdate, wire.Update{Task: 12345, Samples: 1, Loss: 1}, make([]byte, 4*len(f.params)))
	if err != nil {
		t.Fatal(err)
	}
	before := f.hub.Snapshot().BytesReceived
	f.hub.GoAway("test stopping")
	time.Sleep(200 * time.Millisecond) // the close frame is out; without the handshake, so is the socket
	if err := w.Close(); err != nil {
		t.Fatalf("finishing the update after GoAway: %v", err)
	}
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "test stopping" {
		t.Fatalf("read after the update: %v; want close 1001 \"test stopping\"", err)
	}
	// Reading the Close answered it; the hub has read the update and goes.
	gone, cancelGone := context.WithTimeout(ctx, 5*time.Second)
	defer cancelGone()
	if err := f.hub.WaitGone(gone); err != nil {
		t.Fatalf("connection still open after the handshake: %v", err)
	}
	if got := f.hub.Snapshot().BytesReceived - before; got < int64(4*len(f.params)) {
		t.Errorf("the hub read %d bytes after GoAway; want the whole update, over %d", got, 4*len(f.params))
	}
}

func TestWrongTokenIsRefused(t *testing.T) {
	f := newFixture(t, 2, coord.Config{Token: "right"})
	tr, err := trainer.New(trainer.Config{Aggregator: f.srv.URL, Name: "x", Token: "wrong", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = tr.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "wrong or missing token") {
		t.Fatalf("trainer with a wrong token: %v", err)
	}
}

func TestTaskSeedDependsOnRoundAndClientOnly(t *testing.T) {
	seen := map[uint64]bool{}
	for r := 0; r < 20; r++ {
		for c := 0; c < 100; c++ {
			s := coord.TaskSeed(1, r, c)
			if seen[s] {
				t.Fatalf("seed collision at round %d client %d", r, c)
			}
			seen[s] = true
		}
	}
	if coord.TaskSeed(1, 2, 3) != coord.TaskSeed(1, 2, 3) || coord.TaskSeed(1, 2, 3) == coord.TaskSeed(2, 2, 3) {
		t.Fatal("TaskSeed is not a function of (seed, round, client)")
	}
}

// TestEvalRoundMatchesLocalEvaluation scatters evaluation over trainers and
// checks the gathered accuracy and loss are the local figures.
func TestEvalRoundMatchesLocalEvaluation(t *testing.T) {
	f := newFixture(t, 6, coord.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.startTrainer(t, ctx, "a", 1)
	f.startTrainer(t, ctx, "b", 1)
	if err := f.hub.WaitTrainers(ctx, 2); err != nil {
		t.Fatal(err)
	}
	res, err := f.hub.RunRound(ctx, coord.RoundSpec{Round: 0, Version: 0, Model: f.params, Evaluate: true})
	if err != nil {
		t.Fatal(err)
	}
	// The same evaluation, locally, over the concatenated shards.
	all := &data.Dataset{Dim: 20, Classes: 3}
	for _, sh := range f.hub.EvalShardsForTest() {
		ds, err := data.DecodeShard(sh.Bytes, 20, 3, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all.X = append(all.X, ds.X...)
		all.Y = append(all.Y, ds.Y...)
	}
	acc, loss := model.NewWorkspace(f.spec, 64).Evaluate(f.params, all)
	if res.EvalSamples != 300 || res.Completed != 6 || res.Updates != 0 || res.Samples != 0 || res.Mean != nil {
		t.Fatalf("eval round result %+v", res)
	}
	if got := float64(res.Correct) / float64(res.EvalSamples); got != acc || math.Abs(res.EvalLoss-loss) > 1e-9 {
		t.Fatalf("scattered evaluation: accuracy %v loss %v; local: %v %v", got, res.EvalLoss, acc, loss)
	}

	// A round that trains and evaluates the same version gathers exactly
	// what a training round and an evaluation round gather separately.
	train := coord.RoundSpec{Round: 1, Version: 0, Model: f.params, Clients: []int{0, 2, 4, 5},
		Mode: "fedavg", Epochs: 1, Batch: 5, LR: 0.1, Seed: 3}
	alone, err := f.hub.RunRound(ctx, train)
	if err != nil {
		t.Fatal(err)
	}
	train.Evaluate = true
	both, err := f.hub.RunRound(ctx, train)
	if err != nil {
		t.Fatal(err)
	}
	if both.Updates != 4 || both.Completed != 10 || both.Samples != alone.Samples || both.TrainLoss != alone.TrainLoss {
		t.Fatalf("train+eval round %+v; training alone %+v", both, alone)
	}
	for i := range alone.Mean {
		if both.Mean[i] != alone.Mean[i] {
			t.Fatalf("mean[%d] = %v with evaluation in the round, %v without", i, both.Mean[i], alone.Mean[i])
		}
	}
	if both.EvalSamples != res.EvalSamples || both.Correct != res.Correct || both.EvalLoss != res.EvalLoss {
		t.Fatalf("evaluation in a training round: %d/%d loss %v; alone %d/%d loss %v",
			both.Correct, both.EvalSamples, both.EvalLoss, res.Correct, res.EvalSamples, res.EvalLoss)
	}
}

func TestOverSelectionKeepsEvalTasks(t *testing.T) {
	f := newFixture(t, 6, coord.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.startTrainer(t, ctx, "a", 1)
	if err := f.hub.WaitTrainers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// Quorum 2 of 4 clients: the round stops training after two updates
	// but still evaluates every test shard.
	res, err := f.hub.RunRound(ctx, coord.RoundSpec{Round: 0, Version: 0, Model: f.params, Clients: []int{0, 1, 2, 3}, Quorum: 2,
		Mode: "fedavg", Epochs: 1, Batch: 5, LR: 0.1, Seed: 3, Evaluate: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Updates != 2 || res.EvalSamples != 300 || len(res.Dropped) != 0 {
		t.Fatalf("over-selected round with evaluation: %d updates (want 2), %d test examples (want 300), dropped %v (want none: unneeded is not failed)",
			res.Updates, res.EvalSamples, res.Dropped)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTrainingTasksGoBeforeCachedEvalTasks: a trainer prefers tasks whose
// shard it holds, but only among tasks of the kind that comes first, so the
// longer training tasks start before the eval tasks even when the trainer
// holds every test shard and none of the clients' shards.
func TestTrainingTasksGoBeforeCachedEvalTasks(t *testing.T) {
	f := newFixture(t, 6, coord.Config{EvalShards: makeShards(t, 4, 50, 1000)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log syncBuffer
	tr, err := trainer.New(trainer.Config{Aggregator: f.srv.URL, Name: "a", MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = tr.Run(ctx) }()
	if err := f.hub.WaitTrainers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The trainer now holds every test shard and no client's shard.
	if _, err := f.hub.RunRound(ctx, coord.RoundSpec{Round: 0, Version: 0, Model: f.params, Evaluate: true}); err != nil {
		t.Fatal(err)
	}
	mark := len(log.String())
	if _, err := f.hub.RunRound(ctx, coord.RoundSpec{Round: 1, Version: 0, Model: f.params, Clients: []int{3, 1}, Evaluate: true,
		Mode: "fedavg", Epochs: 1, Batch: 5, LR: 0.1, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, l := range strings.Split(log.String()[mark:], "\n") {
		switch {
		case strings.Contains(l, "msg=training"):
			order = append(order, "train")
		case strings.Contains(l, "msg=evaluating"):
			order = append(order, "eval")
		}
	}
	want := "train train eval eval eval eval"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("task order %q, want %q", got, want)
	}
}
