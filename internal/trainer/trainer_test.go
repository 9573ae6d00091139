package trainer

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/wire"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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
		send(wire.TypeWelcome, wire.Welcome{ID: "t1", Model: wire.ModelSpec{Name: "logreg", Sizes: sizes}, Params: params, MaxMessage: 1 << 20}, nil)
		send(wire.TypeModel, wire.Model{Version: 1, Params: params}, payload)
		sent <- struct{}{}
		_, _, _ = ws.ReadMessage() // until the trainer hangs up
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	var log syncBuffer
	tr, err := New(Config{Aggregator: ln.Addr().String(), Name: "nan-test", Report: time.Hour, MinBackoff: time.Hour, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	select {
	case <-sent:
	case <-ctx.Done():
		t.Fatal("the trainer never received the model")
	}
	for !strings.Contains(log.String(), want) {
		if ctx.Err() != nil {
			t.Fatalf("log has no %q:\n%s", want, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if tr.haveModel {
		t.Error("the trainer kept the bad model")
	}
	cancel()
	<-done
}
