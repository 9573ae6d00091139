package trainer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/data"
	"fedgather/internal/model"
	"fedgather/internal/wire"
)

// chanLog is a slog.Handler that passes on, without blocking, what pick
// makes of each record ("" for nothing), so that a test can wait for what
// a trainer logs.
type chanLog struct {
	c    chan string
	pick func(slog.Record) string
}

func (h chanLog) Enabled(context.Context, slog.Level) bool { return true }
func (h chanLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h chanLog) WithGroup(string) slog.Handler            { return h }
func (h chanLog) Handle(_ context.Context, r slog.Record) error {
	if s := h.pick(r); s != "" {
		select {
		case h.c <- s:
		default:
		}
	}
	return nil
}

// errAttr picks a record's "err" attribute: a session's error.
func errAttr(r slog.Record) (err string) {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			err = a.Value.String()
			return false
		}
		return true
	})
	return err
}

// levelAndMessage picks a record's level and message.
func levelAndMessage(r slog.Record) string { return r.Level.String() + " " + r.Message }

// A model with a NaN, or with no payload at all, ends the session with an
// error naming the version and the fault; the trainer does not take it as
// its model.
func TestTrainerRefusesABadModel(t *testing.T) {
	m := make([]float32, 4*3+3)
	m[7] = float32(math.NaN())
	for _, tc := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{"NaN", wire.Float32Bytes(m), "model version 1: tensor value 7 is NaN"},
		{"no payload", nil, "model version 1: tensor payload of 0 bytes, want 60"},
	} {
		t.Run(tc.name, func(t *testing.T) { refusesModel(t, tc.payload, tc.want) })
	}
}

func refusesModel(t *testing.T, payload []byte, want string) {
	sizes := []int{4, 3}
	params := 4*3 + 3
	sent := make(chan struct{}, 8)
	addr := fakeAggregator(t, func(ws *websocket.Conn, send sendFunc) {
		send(wire.TypeWelcome, wire.Welcome{ID: "t1", Model: wire.ModelSpec{Name: "logreg", Sizes: sizes}, Params: params, MaxMessage: 1 << 20}, nil)
		send(wire.TypeModel, wire.Model{Version: 1, Params: params}, payload)
		sent <- struct{}{}
	})
	errs := make(chan string, 16)
	tr, ctx := startTrainer(t, addr, "bad-model-test", chanLog{errs, errAttr})
	select {
	case <-sent:
	case <-ctx.Done():
		t.Fatal("the trainer never received the model")
	}
	select {
	case got := <-errs:
		if !strings.Contains(got, want) {
			t.Fatalf("the session ended with %q, want %q", got, want)
		}
	case <-ctx.Done():
		t.Fatalf("the trainer logged no error; want %q", want)
	}
	if tr.haveModel {
		t.Error("the trainer kept the bad model")
	}
}

// sendFunc encodes and writes one frame to a trainer.
type sendFunc func(typ wire.Type, header any, payload []byte)

// fakeAggregator serves websocket connections on a loopback port for the
// length of the test: it reads each trainer's hello, runs session with a
// sendFunc that fails the test if a frame cannot be sent, and then reads
// until the trainer hangs up. It returns the address to dial. When the test
// ends it closes the connections and waits for their sessions, so that no
// session reports to a test that has ended.
func fakeAggregator(t *testing.T, session func(ws *websocket.Conn, send sendFunc)) string {
	t.Helper()
	up := websocket.Upgrader{}
	var (
		mu       sync.Mutex
		conns    []*websocket.Conn
		sessions sync.WaitGroup
	)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sessions.Add(1)
		defer sessions.Done()
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		mu.Lock()
		conns = append(conns, ws)
		mu.Unlock()
		if _, _, err := ws.ReadMessage(); err != nil { // hello
			return
		}
		session(ws, func(typ wire.Type, h any, payload []byte) {
			b, err := wire.Encode(typ, h, payload)
			if err == nil {
				err = ws.WriteMessage(websocket.BinaryMessage, b)
			}
			if err != nil {
				t.Error(err)
			}
		})
		for { // until the trainer hangs up
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close() // does not close the upgraded connections
		mu.Lock()
		for _, ws := range conns {
			_ = ws.Close()
		}
		mu.Unlock()
		sessions.Wait()
	})
	return ln.Addr().String()
}

// startTrainer runs a trainer for the aggregator at addr, logging to log,
// until the test ends (at most 20 seconds: ctx ends then).
func startTrainer(t *testing.T, addr, name string, log slog.Handler) (*Trainer, context.Context) {
	t.Helper()
	tr, err := New(Config{Aggregator: addr, Name: name, Report: time.Hour, MinBackoff: time.Hour, Logger: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return tr, ctx
}

// A trainer that holds more shards than a hello header can list announces
// the most recently used ones, and its hello still fits: before the cap, a
// trainer holding about 1,000 shards could not say hello again after a
// reconnect.
func TestHelloAnnouncesRecentShardsWithinMaxHeader(t *testing.T) {
	tr, err := New(Config{Aggregator: "127.0.0.1:1", Name: "many-shards"})
	if err != nil {
		t.Fatal(err)
	}
	ds := &data.Dataset{Dim: 1, Classes: 2}
	var all []string
	for i := range 2000 {
		sum := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		h := hex.EncodeToString(sum[:])
		all = append(all, h)
		tr.shards[h] = &cachedShard{ds: ds}
		tr.use(tr.shards[h])
	}
	tr.use(tr.shards[all[3]]) // trained on again: the most recent
	if _, err := wire.Prefix(wire.TypeHello, wire.Hello{Name: "many-shards", Shards: all}); err == nil {
		t.Fatal("a hello listing 2,000 shards fits in a header; the test no longer shows the limit")
	}
	got := tr.helloShards()
	if len(got) != maxHelloShards {
		t.Fatalf("hello lists %d shards, want %d", len(got), maxHelloShards)
	}
	if got[0] != all[3] || got[1] != all[1999] || got[len(got)-1] != all[2000-maxHelloShards+1] {
		t.Errorf("hello lists %s, %s … %s; want the most recently used first", got[0][:8], got[1][:8], got[len(got)-1][:8])
	}
	if _, err := wire.Prefix(wire.TypeHello, wire.Hello{Name: "many-shards", Token: strings.Repeat("t", 256), Shards: got}); err != nil {
		t.Errorf("hello does not fit: %v", err)
	}
}

// A shard is decoded with its header's row count as the limit: a header
// over the trainer's MaxRows, or under the rows the payload holds, is
// refused before the rows are reserved, naming both counts.
func TestShardRowsAreBoundedByTheHeader(t *testing.T) {
	tr, err := New(Config{Aggregator: "127.0.0.1:1", Name: "rows", MaxRows: 5})
	if err != nil {
		t.Fatal(err)
	}
	tr.spec = model.Spec{Name: "logreg", Sizes: []int{4, 3}}
	payload, err := data.EncodeShard(&data.Dataset{X: []float32{1, 2, 3, 4, 5, 6, 7, 8}, Y: []int32{0, 2}, Dim: 4, Classes: 3})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	hash := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		rows int
		want string
	}{
		{9, "header says 9 rows, expected 0 to 5"},
		{1, "expected at most 1 rows in the shard, got 2"},
		{2, ""},
	} {
		err := tr.shard(&wire.Shard{Hash: hash, Rows: tc.rows}, payload)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("header of %d rows: %v", tc.rows, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("header of %d rows: got %v, want an error containing %q", tc.rows, err, tc.want)
		}
	}
	if c := tr.shards[hash]; c == nil || c.ds.Len() != 2 {
		t.Fatal("the shard with the right header is not cached")
	}
}

// A welcome whose model's frames do not fit the aggregator's message limit,
// or this trainer's, ends Run with ErrMismatch naming both sizes, at once:
// reconnecting would only meet the same welcome. So does any message over
// this trainer's limit, such as a large shard, which would come again.
func TestModelTooLargeForAMessageLimitEndsTheTrainer(t *testing.T) {
	sizes := []int{784, 10}
	params := 784*10 + 10 // 31,400 bytes a tensor, 96,942 a frame at most
	for _, tc := range []struct {
		name       string
		aggregator int64 // the welcome's max_message
		trainer    int64 // the trainer's own
		want       string
	}{
		{"aggregator's", 50_000, 1 << 20, "updates take up to 96942 bytes, more than the 50000 bytes it accepts"},
		{"trainer's", 1 << 20, 50_000, "frames take up to 96942 bytes, more than this trainer's -max-message 50000"},
		{"trainer's, by a shard", 1 << 20, 150_000, "it sent a message larger than this trainer's -max-message 150000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeAggregator(t, func(ws *websocket.Conn, send sendFunc) {
				send(wire.TypeWelcome, wire.Welcome{ID: "t1", Model: wire.ModelSpec{Name: "logreg", Sizes: sizes}, Params: params, MaxMessage: tc.aggregator}, nil)
				if tc.trainer == 150_000 { // the model fits; a shard does not
					send(wire.TypeShard, wire.Shard{Hash: strings.Repeat("0", 64), Rows: 1}, make([]byte, 200_000))
				}
			})
			tr, err := New(Config{Aggregator: addr, Name: "limit-test", Report: time.Hour, MinBackoff: 10 * time.Millisecond, MaxMessage: tc.trainer, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = tr.Run(ctx)
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run returned %v; want ErrMismatch naming %q", err, tc.want)
			}
			if ctx.Err() != nil {
				t.Fatal("Run returned only when its context ended")
			}
		})
	}
}

// With -give-up, a trainer that cannot reach the aggregator stops with
// ErrGaveUp once that long has passed since its last connection; one whose
// connections are dropped as soon as they are made keeps trying.
func TestGiveUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there now

	dropping := fakeAggregator(t, func(ws *websocket.Conn, _ sendFunc) { ws.Close() })
	for _, tc := range []struct {
		name, addr string
		want       error
	}{
		{"unreachable", closed, ErrGaveUp},
		{"reachable, dropping", dropping, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const giveUp = 300 * time.Millisecond
			tr, err := New(Config{Aggregator: tc.addr, Name: "give-up", Report: time.Hour, GiveUp: giveUp,
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*giveUp)
			defer cancel()
			start := time.Now()
			err = tr.Run(ctx)
			took := time.Since(start)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run returned %v after %v; want %v", err, took, tc.want)
			}
			if tc.want == nil {
				return
			}
			if took < giveUp || ctx.Err() != nil {
				t.Errorf("Run gave up after %v; want after -give-up %v and before its context ended", took, giveUp)
			}
			for _, s := range []string{"gave up reaching the aggregator: no connection for ", "(-give-up 300ms); last error: dial ws://" + closed, "connection refused"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// An aggregator that closes with 1001 (going away: it is stopping) is
// logged as information, not as a warning; a connection lost otherwise is a
// warning.
func TestGoingAwayIsNotAWarning(t *testing.T) {
	for _, tc := range []struct {
		code int
		want string
	}{
		{websocket.CloseGoingAway, "INFO the aggregator is going away; reconnecting"},
		{websocket.CloseInternalServerErr, "WARN connection lost; reconnecting"},
	} {
		addr := fakeAggregator(t, func(ws *websocket.Conn, _ sendFunc) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(tc.code, "test"), time.Now().Add(time.Second))
		})
		logs := make(chan string, 100)
		startTrainer(t, addr, "away", chanLog{logs, levelAndMessage}) // waits out its back-off until the test ends
		var seen []string
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case line := <-logs:
				seen = append(seen, line)
				if strings.HasSuffix(line, "reconnecting") {
					break wait
				}
			case <-timeout:
				break wait
			}
		}
		if len(seen) == 0 || seen[len(seen)-1] != tc.want {
			t.Errorf("close %d: logged %q; want the last line %q", tc.code, seen, tc.want)
		}
	}
}
