// Command simtrainer is a light stand-in for many trainers: it opens N real
// websocket connections to a real aggregator and speaks the real protocol
// of internal/wire on each (hello, pull; accept model, shard and task
// frames), but instead of training it answers every task at once with a
// small deterministic update. It exists to measure the aggregator with
// hundreds or thousands of connected trainers on one machine (bench/run,
// internal/e2e/scale_test.go), where real trainer processes would cost a
// process and a training run each.
//
//	simtrainer -aggregator 127.0.0.1:7070 -n 1000
//
// It exits when every connection has been told the job is done (or has
// closed), then prints one JSON line on stdout:
//
//	{"connections":1000,"connected":1000,"done":1000,"closed":0,"tasks":5000,
//	 "models":5000,"shards":5000,"error_frames":0,"failures":0,"seconds":12.3}
//
// connected counts connections that were welcomed, done those that ended
// with a done frame, closed those the aggregator closed without one (it
// does so when it exits before its writers have flushed the done frames),
// tasks the updates sent, error_frames the error frames received from the
// aggregator and failures the connections that ended any other way (dial,
// protocol or network errors, or a close before any task was answered); each
// failure is also described on stderr. The exit status is 1 when
// error_frames or failures is not zero.
//
// The update for a training task is Δw[i] = 1e-4·((client+i) mod 7 − 3),
// the same for every connection, so runs are reproducible; an evaluation
// task (mode "eval") is answered with its sample count and no tensor.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/wire"
)

type stats struct {
	Connections int     `json:"connections"`
	Connected   int64   `json:"connected"`
	Done        int64   `json:"done"`
	Closed      int64   `json:"closed"`
	Tasks       int64   `json:"tasks"`
	Models      int64   `json:"models"`
	Shards      int64   `json:"shards"`
	ErrorFrames int64   `json:"error_frames"`
	Failures    int64   `json:"failures"`
	Seconds     float64 `json:"seconds"`
}

type sim struct {
	url   string
	token string
	st    stats
	// updates caches the update payload per client; every connection
	// shares them read-only.
	mu      sync.Mutex
	updates map[int][]byte
}

func main() {
	addr := flag.String("aggregator", "127.0.0.1:7070", "aggregator HOST:PORT")
	n := flag.Int("n", 10, "connections (simulated trainers) to open")
	name := flag.String("name", "sim", "trainer name prefix; connection i is NAME-i")
	token := flag.String("token", "", "the aggregator's -token")
	dialers := flag.Int("dialers", 32, "connections dialled at the same time")
	timeout := flag.Duration("timeout", 30*time.Minute, "give up after this long")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("simtrainer: ")
	if *n < 1 || *n > 100000 {
		log.Fatalf("-n %d: want 1..100000", *n)
	}
	if *dialers < 1 {
		*dialers = 1
	}
	if strings.Contains(*addr, "/") {
		log.Fatalf("-aggregator %q: want HOST:PORT", *addr)
	}
	s := &sim{url: "ws://" + *addr + "/v1/train", token: *token, updates: make(map[int][]byte)}
	s.st.Connections = *n
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	start := time.Now()
	var wg sync.WaitGroup
	slots := make(chan struct{}, *dialers)
	for i := 1; i <= *n; i++ {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws, err := s.dial(ctx, slots)
			if err != nil {
				atomic.AddInt64(&s.st.Failures, 1)
				log.Printf("connection %d: %v", i, err)
				return
			}
			err = s.serve(ctx, ws, fmt.Sprintf("%s-%d", *name, i))
			var ce *websocket.CloseError
			switch {
			case err == nil:
			case (errors.As(err, &ce) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) && atomic.LoadInt64(&s.st.Tasks) > 0:
				atomic.AddInt64(&s.st.Closed, 1)
			default:
				atomic.AddInt64(&s.st.Failures, 1)
				log.Printf("connection %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	s.st.Seconds = time.Since(start).Seconds()
	if err := json.NewEncoder(os.Stdout).Encode(&s.st); err != nil {
		log.Fatal(err)
	}
	if s.st.Failures > 0 || s.st.ErrorFrames > 0 {
		os.Exit(1)
	}
}

// dial opens one connection, retrying a refused dial a few times (a burst
// of connections can overflow the listen backlog), and frees its dial slot.
func (s *sim) dial(ctx context.Context, slot chan struct{}) (*websocket.Conn, error) {
	defer func() { <-slot }()
	d := websocket.Dialer{ReadBufferSize: 4 << 10, WriteBufferSize: 64 << 10, HandshakeTimeout: 10 * time.Second}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var ws *websocket.Conn
		var resp *http.Response
		ws, resp, err = d.DialContext(ctx, s.url, nil)
		if err == nil {
			ws.SetReadLimit(1 << 30)
			return ws, nil
		}
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %s)", s.url, err, resp.Status)
		}
		select {
		case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("dial %s: %w", s.url, err)
}

// update returns the payload answering a task for client k.
func (s *sim) update(k, params int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.updates[k]; ok {
		return b
	}
	b := make([]byte, 4*params)
	for i := 0; i < params; i++ {
		v := float32(1e-4) * float32((k+i)%7-3)
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	s.updates[k] = b
	return b
}

// serve speaks the protocol on one connection until the aggregator says
// done. Only this goroutine writes frames; gorilla answers pings itself
// while we read.
func (s *sim) serve(ctx context.Context, ws *websocket.Conn, name string) error {
	defer ws.Close()
	stop := context.AfterFunc(ctx, func() { _ = ws.Close() })
	defer stop()
	if err := write(ws, wire.TypeHello, wire.Hello{Name: name, Token: s.token}, nil); err != nil {
		return err
	}
	params := -1
	version := -1
	var buf []byte
	for {
		var f wire.Frame
		var err error
		f, buf, err = readFrame(ws, buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("timed out: %w", ctx.Err())
			}
			return fmt.Errorf("read: %w", err)
		}
		switch f.Type {
		case wire.TypeWelcome:
			var w wire.Welcome
			if err := f.Parse(&w); err != nil {
				return err
			}
			params = w.Params
			atomic.AddInt64(&s.st.Connected, 1)
			if err := write(ws, wire.TypePull, wire.Pull{}, nil); err != nil {
				return err
			}
		case wire.TypeModel:
			var m wire.Model
			if err := f.Parse(&m); err != nil {
				return err
			}
			version = m.Version
			atomic.AddInt64(&s.st.Models, 1)
		case wire.TypeShard:
			atomic.AddInt64(&s.st.Shards, 1)
		case wire.TypeTask:
			var t wire.Task
			if err := f.Parse(&t); err != nil {
				return err
			}
			if params < 0 || version != t.Version {
				return fmt.Errorf("task %d for version %d before its model (have %d)", t.ID, t.Version, version)
			}
			u := wire.Update{Task: t.ID, Round: t.Round, Version: t.Version, Client: t.Client, Samples: t.Rows, Loss: 0.5, Seconds: 0.001}
			var payload []byte
			if t.Mode != "eval" { // an evaluation result carries no tensor
				payload = s.update(t.Client, params)
			}
			if err := write(ws, wire.TypeUpdate, u, payload); err != nil {
				return err
			}
			atomic.AddInt64(&s.st.Tasks, 1)
			if err := write(ws, wire.TypePull, wire.Pull{}, nil); err != nil {
				return err
			}
		case wire.TypeDone:
			atomic.AddInt64(&s.st.Done, 1)
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(time.Second))
			return nil
		case wire.TypeError:
			var e wire.Error
			_ = f.Parse(&e)
			atomic.AddInt64(&s.st.ErrorFrames, 1)
			log.Printf("%s: aggregator error %s: %s", name, e.Code, e.Message)
			if e.Fatal {
				return fmt.Errorf("fatal error from the aggregator: %s", e.Code)
			}
		default:
			return fmt.Errorf("unexpected %s frame", f.Type)
		}
	}
}

// readFrame reads one frame's prefix and JSON header into buf, checks them
// with wire.Decode, and discards the payload, which this simulator never
// uses.
func readFrame(ws *websocket.Conn, buf []byte) (wire.Frame, []byte, error) {
	mt, r, err := ws.NextReader()
	if err != nil {
		return wire.Frame{}, buf, err
	}
	if mt != websocket.BinaryMessage {
		return wire.Frame{}, buf, errors.New("text websocket message; the protocol uses binary messages only")
	}
	buf = append(buf[:0], make([]byte, wire.PrefixLen)...)
	if _, err := io.ReadFull(r, buf); err != nil {
		return wire.Frame{}, buf, err
	}
	h := binary.LittleEndian.Uint32(buf[2:])
	if h > wire.MaxHeader {
		return wire.Frame{}, buf, fmt.Errorf("frame header of %d bytes, limit %d", h, wire.MaxHeader)
	}
	buf = append(buf, make([]byte, h)...)
	if _, err := io.ReadFull(r, buf[wire.PrefixLen:]); err != nil {
		return wire.Frame{}, buf, err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return wire.Frame{}, buf, err
	}
	f, err := wire.Decode(buf)
	return f, buf, err
}

func write(ws *websocket.Conn, t wire.Type, header any, payload []byte) error {
	_ = ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
	w, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		return err
	}
	if err := wire.Write(w, t, header, payload); err != nil {
		return err
	}
	return w.Close()
}
