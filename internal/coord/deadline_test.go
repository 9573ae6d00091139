package coord_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/coord"
	"fedgather/internal/wire"
)

// stubTrainer is a protocol-level trainer driven by the test: it reports
// the tasks it is given, and the test decides what it sends.
type stubTrainer struct {
	ws    *websocket.Conn
	tasks chan wire.Task
}

// dialStub connects a stubTrainer, says hello and waits for the welcome.
// A small write buffer makes gorilla send an unfinished message's frames
// as they fill, so that the hub starts reading an update the test has not
// finished.
func dialStub(t *testing.T, ctx context.Context, url, name string) *stubTrainer {
	t.Helper()
	ws, err := dialWS(ctx, url, 64)
	if err != nil {
		t.Fatal(err)
	}
	s := &stubTrainer{ws: ws, tasks: make(chan wire.Task, 16)}
	welcome := make(chan struct{})
	go func() {
		for {
			_, r, err := ws.NextReader()
			if err != nil {
				return
			}
			f, err := wire.ReadHead(r, nil)
			if err != nil {
				return
			}
			switch f.Type {
			case wire.TypeWelcome:
				close(welcome)
			case wire.TypeTask:
				var task wire.Task
				if f.Parse(&task) == nil {
					s.tasks <- task
				}
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				return
			}
		}
	}()
	if err := sendFrame(s.ws, wire.TypeHello, wire.Hello{Name: name}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-welcome:
	case <-ctx.Done():
		t.Fatal("no welcome")
	}
	return s
}

func updateFor(task wire.Task) wire.Update {
	return wire.Update{Task: task.ID, Round: task.Round, Version: task.Version, Client: task.Client, Samples: task.Rows, Loss: 1}
}

// TestNoBackupTasksWhileUpdatesWaitForTheHub: while every update buffer is
// taken, late results are waiting for the hub to read them, so no task is
// issued again, however late; once the reads go on, a task that really is
// late goes to an idle trainer, and the round completes.
func TestNoBackupTasksWhileUpdatesWaitForTheHub(t *testing.T) {
	const params = logregParams
	const deadline = 30 * time.Millisecond
	hub, srv := newLogregHub(t, coord.Config{Shards: makeShards(t, coord.UpdateReads+1, 3, 0), TaskDeadline: deadline})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// UpdateReads trainers will stall in the middle of their updates, and
	// one more will never answer; all pull before the round starts.
	var stalled []*stubTrainer
	for i := range coord.UpdateReads {
		stalled = append(stalled, dialStub(t, ctx, srv.URL, "stalled-"+string(rune('a'+i))))
	}
	silent := dialStub(t, ctx, srv.URL, "silent")
	for _, s := range append(stalled, silent) {
		if err := sendFrame(s.ws, wire.TypePull, wire.Pull{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := hub.WaitTrainers(ctx, coord.UpdateReads+1); err != nil {
		t.Fatal(err)
	}
	clients := make([]int, coord.UpdateReads+1)
	for i := range clients {
		clients[i] = i
	}
	type outcome struct {
		res *coord.RoundResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := hub.RunRound(ctx, coord.RoundSpec{Model: make([]float32, params), Clients: clients, Mode: "fedavg", Epochs: 1, Batch: 1, LR: 0.1})
		done <- outcome{res, err}
	}()
	next := func(s *stubTrainer) wire.Task {
		t.Helper()
		select {
		case task := <-s.tasks:
			return task
		case <-ctx.Done():
			t.Fatal("no task")
			return wire.Task{}
		}
	}
	zero := make([]byte, 4*params)
	var unfinished []io.WriteCloser
	for _, s := range stalled {
		w, err := startFrame(s.ws, wire.TypeUpdate, updateFor(next(s)), zero)
		if err != nil {
			t.Fatal(err)
		}
		unfinished = append(unfinished, w)
	}
	next(silent)
	for hub.FreeUpdateBuffersForTest() > 0 {
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the hub never took every update buffer")
		}
	}

	// An idle trainer joins at the round's tail, with every task past its
	// deadline and every update buffer taken.
	idle := dialStub(t, ctx, srv.URL, "idle")
	if err := sendFrame(idle.ws, wire.TypePull, wire.Pull{}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case task := <-idle.tasks:
		t.Fatalf("task %d (client %d) was issued again while every update buffer was taken", task.ID, task.Client)
	case <-time.After(10 * deadline):
	}

	// The stalled updates finish; the silent trainer's task, still late,
	// goes to the idle trainer, which answers whatever it is given.
	for _, w := range unfinished {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for {
			select {
			case task := <-idle.tasks:
				if sendFrame(idle.ws, wire.TypeUpdate, updateFor(task), zero) != nil || sendFrame(idle.ws, wire.TypePull, wire.Pull{}, nil) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.res.Updates != len(clients) || o.res.Reissued == 0 {
		t.Errorf("round gathered %d updates with %d tasks issued again; want %d updates and at least one task issued again", o.res.Updates, o.res.Reissued, len(clients))
	}
}
