package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/allreduce"
	"fedgather/internal/coord"
	"fedgather/internal/data"
	"fedgather/internal/trainer"
	"fedgather/internal/wire"
)

// pairBuffer is the client's websocket buffer size in the buffered and
// direct pairs: 64 KiB both ways, the size the issue measured gorilla with.
const pairBuffer = 64 << 10

// transportRow is one line of "bench transport": one 2NN model scattered
// to a trainer and one update of the same size gathered back, over
// loopback, in MB/s (10^6 bytes of payload per second, both directions).
//
//	hub      ours: a real coord.Hub runs one-task rounds (RunRound) for one
//	         protocol-only trainer, which reads each frame straight into
//	         its tensor (wire.ReadHead, wire.ReadFiniteTensor)
//	         and answers every task at once with a fixed update through a
//	         1 MiB write buffer: the round trip with the hub's bookkeeping
//	         but no training.
//	real     the same hub with the real trainer (internal/trainer), whose
//	         client holds one example: adds what the trainer does per task
//	         besides training proper (copying the model, preparing the
//	         layers, computing Δw).
//	buffered the same frames over a bare gorilla/websocket pair, the
//	         server with the hub's buffers (coord.BufferSize) and the
//	         client with 64 KiB (pairBuffer), each side reading a frame into a
//	         buffer first and then copying the tensor out with
//	         wire.ReadFloat32s (the receiving side then also runs
//	         allreduce.CheckFinite): the read path before direct reads.
//	direct   the same pair, each side reading the payload straight into its
//	         []float32: the client as the trainer does
//	         (wire.ReadFiniteTensor, checking each piece as it arrives), the
//	         server as the hub does (wire.ReadTensor, then a range check).
//	big      direct, with the trainer's websocket buffers (64 KiB to read,
//	         1 MiB to write) on the client instead of pairBuffer, so that
//	         an update (a client frame, which gorilla masks by copying it
//	         through the write buffer) leaves as one frame.
//	bare     big without any check: the websocket framing alone.
//	tcpcheck raw TCP as below, each side checking the values it reads piece
//	         by piece as they arrive (finite on the client, finite and
//	         within ±MaxAbs on the server): the ceiling for any protocol
//	         that validates the tensors it receives.
//	anchor   raw TCP: the same payload bytes written and read back with
//	         io.ReadFull into a reused buffer.
type transportRow struct {
	Row      string  `json:"row"` // "transport"
	Case     string  `json:"case"`
	Bytes    int     `json:"bytes"` // payload bytes per round trip (model + update)
	Hub      spread  `json:"hub"`
	Real     spread  `json:"real"`
	Wire     spread  `json:"wire"`
	Direct   spread  `json:"direct"`
	Big      spread  `json:"big"`
	Bare     spread  `json:"bare"` // big without checks: the framing alone
	Anchor   spread  `json:"anchor"`
	Checked  spread  `json:"tcp_checked"`  // raw TCP, each side checking the tensor it read
	Ratio    spread  `json:"ratio"`        // hub/anchor per repeat
	RealRat  spread  `json:"real_ratio"`   // real/anchor per repeat
	WireRat  spread  `json:"wire_ratio"`   // wire/anchor per repeat
	DirRat   spread  `json:"direct_ratio"` // direct/anchor per repeat
	BigRat   spread  `json:"big_ratio"`    // big/anchor per repeat
	BareRat  spread  `json:"bare_ratio"`
	CheckRat spread  `json:"tcp_checked_ratio"`
	Target   float64 `json:"target"`
	Repeats  int     `json:"repeats"`
	Trips    int     `json:"round_trips"` // per measurement
}

const params2NN = 199210

func runTransport(args []string) error {
	fs := flag.NewFlagSet("transport", flag.ContinueOnError)
	repeats := fs.Int("repeats", 7, "measurements of each side")
	trips := fs.Int("trips", 100, "round trips per measurement")
	only := fs.String("only", "", "measure only this path (hub, real, buffered, direct, big, bare, tcp, tcpcheck), for profiling")
	prof := profileFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProf, err := prof()
	if err != nil {
		return err
	}
	defer stopProf()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := params2NN
	model := make([]float32, n)
	delta := make([]float32, n)
	for i := range model {
		model[i] = float32(i%101) * 1e-3
		delta[i] = float32(i%7-3) * 1e-4
	}
	hub, stopHub, err := startHubPair(ctx, n, delta, false)
	if err != nil {
		return err
	}
	defer stopHub()
	realHub, stopReal, err := startHubPair(ctx, n, delta, true)
	if err != nil {
		return err
	}
	defer stopReal()
	wp, err := startWirePair(model, delta, readBuffered, pairBuffer, pairBuffer)
	if err != nil {
		return err
	}
	defer wp.close()
	dp, err := startWirePair(model, delta, readDirect, pairBuffer, pairBuffer)
	if err != nil {
		return err
	}
	defer dp.close()
	bp, err := startWirePair(model, delta, readDirect, trainer.ReadBufferSize, trainer.WriteBufferSize)
	if err != nil {
		return err
	}
	defer bp.close()
	np, err := startWirePair(model, delta, readUnchecked, trainer.ReadBufferSize, trainer.WriteBufferSize)
	if err != nil {
		return err
	}
	defer np.close()
	tp, err := startTCPPair(4*n, false)
	if err != nil {
		return err
	}
	defer tp.close()
	cp, err := startTCPPair(4*n, true)
	if err != nil {
		return err
	}
	defer cp.close()

	roundTrips := func(h *coord.Hub) func(int) error {
		version := 0
		mean := make([]float32, n) // reused round after round, as the job does
		return func(k int) error {
			for range k {
				res, err := h.RunRound(ctx, coord.RoundSpec{Round: version, Version: version, Model: model, Mean: mean, Clients: []int{0}, Mode: "fedavg", Epochs: 1, Batch: 1, LR: 0.01, Seed: 1})
				if err != nil {
					return err
				}
				if res.Updates != 1 {
					return fmt.Errorf("round %d gathered %d updates, want 1", version, res.Updates)
				}
				version++
			}
			return nil
		}
	}
	hubTrips, realTrips := roundTrips(hub), roundTrips(realHub)
	// Warm up each path (the hub's first round also sends the shard).
	for _, f := range []func(int) error{hubTrips, realTrips, wp.trips, dp.trips, bp.trips, np.trips, tp.trips, cp.trips} {
		if err := f(3); err != nil {
			return err
		}
	}
	bytes := float64(8 * n)
	measure := func(f func(int) error) (float64, error) {
		runtime.GC()
		start := time.Now()
		if err := f(*trips); err != nil {
			return 0, err
		}
		return bytes * float64(*trips) / time.Since(start).Seconds() / 1e6, nil
	}
	progress("transport: %d × %d round trips of a 0.8 MB model and update on each of 8 paths", *repeats, *trips)
	var hubs, reals, wires, directs, bigs, bares, tcps, checked []float64
	for rep := range *repeats {
		paths := []struct {
			name string
			f    func(int) error
			out  *[]float64
		}{{"hub", hubTrips, &hubs}, {"real", realTrips, &reals}, {"buffered", wp.trips, &wires}, {"direct", dp.trips, &directs}, {"big", bp.trips, &bigs}, {"bare", np.trips, &bares}, {"tcp", tp.trips, &tcps}, {"tcpcheck", cp.trips, &checked}}
		// Rotate the order so no path always runs first.
		for i := range paths {
			p := paths[(i+rep)%len(paths)]
			if *only != "" && p.name != *only {
				continue
			}
			v, err := measure(p.f)
			if err != nil {
				return err
			}
			*p.out = append(*p.out, v)
		}
	}
	return emit(&transportRow{
		Row: "transport", Case: "2NN model + update (2 × 0.8 MB)", Bytes: 8 * n,
		Hub: spreadOf(hubs), Real: spreadOf(reals), Wire: spreadOf(wires), Direct: spreadOf(directs), Big: spreadOf(bigs), Bare: spreadOf(bares), Anchor: spreadOf(tcps),
		Checked: spreadOf(checked), CheckRat: spreadOf(ratios(checked, tcps)),
		Ratio: spreadOf(ratios(hubs, tcps)), RealRat: spreadOf(ratios(reals, tcps)), WireRat: spreadOf(ratios(wires, tcps)), DirRat: spreadOf(ratios(directs, tcps)), BigRat: spreadOf(ratios(bigs, tcps)), BareRat: spreadOf(ratios(bares, tcps)),
		Target: 0.9, Repeats: *repeats, Trips: *trips,
	})
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startHubPair serves a coord.Hub on loopback and connects one trainer to
// it: with real, internal/trainer holding a one-example shard (its task's
// training is negligible next to the transfers); otherwise a
// protocol-only trainer that answers every task with delta.
func startHubPair(ctx context.Context, n int, delta []float32, real bool) (*coord.Hub, func(), error) {
	x := make([]float32, 784)
	for i := range x {
		x[i] = float32(i%255) / 255
	}
	shard, err := data.EncodeShard(&data.Dataset{X: x, Y: []int32{3}, Dim: 784, Classes: 10})
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(shard)
	hub, err := coord.New(coord.Config{
		Model:  wire.ModelSpec{Name: "2nn", Sizes: []int{784, 200, 200, 10}},
		Params: n,
		Shards: []coord.Shard{{Hash: hex.EncodeToString(sum[:]), Rows: 1, Bytes: shard}},
		Logger: quietLogger(),
	})
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/train", hub)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	tctx, stopTrainer := context.WithCancel(ctx)
	done := make(chan error, 1)
	if real {
		tr, err := trainer.New(trainer.Config{Aggregator: ln.Addr().String(), Name: "bench", Report: time.Hour, Logger: quietLogger()})
		if err != nil {
			stopTrainer()
			_ = srv.Close()
			return nil, nil, err
		}
		go func() { done <- tr.Run(tctx) }()
	} else {
		d := websocket.Dialer{ReadBufferSize: trainer.ReadBufferSize, WriteBufferSize: trainer.WriteBufferSize, HandshakeTimeout: 10 * time.Second}
		ws, _, err := d.DialContext(ctx, "ws://"+ln.Addr().String()+"/v1/train", nil)
		if err != nil {
			stopTrainer()
			_ = srv.Close()
			return nil, nil, err
		}
		context.AfterFunc(tctx, func() { _ = ws.Close() })
		go func() { done <- protocolTrainer(ws, n, delta) }()
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := hub.WaitTrainers(wctx, 1); err != nil {
		stopTrainer()
		_ = srv.Close()
		return nil, nil, err
	}
	stop := func() {
		hub.Finish("benchmark over")
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		stopTrainer()
		_ = srv.Close()
	}
	return hub, stop, nil
}

// protocolTrainer speaks the trainer's side of the protocol on ws and
// answers every task at once with delta: model frames are read straight
// into a tensor and checked, other payloads discarded.
func protocolTrainer(ws *websocket.Conn, n int, delta []float32) error {
	global := make([]float32, n)
	payload := wire.Float32Bytes(delta)
	send := func(t wire.Type, h any, p []byte) error {
		w, err := ws.NextWriter(websocket.BinaryMessage)
		if err != nil {
			return err
		}
		if err := wire.Write(w, t, h, p); err != nil {
			return err
		}
		return w.Close()
	}
	if err := send(wire.TypeHello, wire.Hello{Name: "bench"}, nil); err != nil {
		return err
	}
	var hdr []byte
	for {
		_, r, err := ws.NextReader()
		if err != nil {
			return err
		}
		f, err := wire.ReadHead(r, hdr)
		if err != nil {
			return err
		}
		hdr = f.Header
		switch f.Type {
		case wire.TypeWelcome:
			err = send(wire.TypePull, wire.Pull{}, nil)
		case wire.TypeModel:
			_, err = wire.ReadFiniteTensor(r, global)
		case wire.TypeTask:
			var t wire.Task
			if err = f.Parse(&t); err == nil {
				err = send(wire.TypeUpdate, wire.Update{Task: t.ID, Round: t.Round, Version: t.Version, Client: t.Client, Samples: t.Rows, Loss: 0.5}, payload)
			}
			if err == nil {
				err = send(wire.TypePull, wire.Pull{}, nil)
			}
		case wire.TypeDone:
			return nil
		case wire.TypeError:
			return fmt.Errorf("hub sent an error frame: %s", f.Header)
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	}
}

// pair is a server and a client connection driven in lock step: trips(k)
// makes k round trips and returns when the server has read the k-th reply.
type pair struct {
	run   chan int
	done  chan error
	quit  chan struct{}
	close func()
}

func newPair() *pair {
	return &pair{run: make(chan int), done: make(chan error), quit: make(chan struct{})}
}

func (p *pair) trips(k int) error {
	p.run <- k
	return <-p.done
}

// serve runs the server side until p.quit closes: for each trips(k), k
// calls of trip, stopping at the first error, which trips returns.
func (p *pair) serve(trip func() error) {
	for {
		var k int
		select {
		case k = <-p.run:
		case <-p.quit:
			return
		}
		var err error
		for i := 0; i < k && err == nil; i++ {
			err = trip()
		}
		p.done <- err
	}
}

// readMode is how the two ends of a websocket pair read a tensor frame.
type readMode int

const (
	readBuffered  readMode = iota // whole frame into a buffer, then copied out and checked
	readDirect                    // straight into the tensor: as the trainer (client) and the hub (server) read
	readUnchecked                 // straight into the tensor, no check: the framing alone
)

// startWirePair connects a websocket client to a websocket server on
// loopback. Per round trip the server sends a model frame and reads the
// update frame, and the client reads the model frame and answers, both
// reading as mode says. readBuf and writeBuf are the client's buffer
// sizes.
func startWirePair(model, delta []float32, mode readMode, readBuf, writeBuf int) (*pair, error) {
	n := len(model)
	p := newPair()
	prefix, err := wire.Prefix(wire.TypeModel, wire.Model{Version: 1, Params: n})
	if err != nil {
		return nil, err
	}
	mpayload := wire.Float32Bytes(model)
	up := websocket.Upgrader{ReadBufferSize: coord.BufferSize, WriteBufferSize: coord.BufferSize}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		var buf bytes.Buffer
		update := make([]float32, n)
		p.serve(func() error {
			w, err := ws.NextWriter(websocket.BinaryMessage)
			if err != nil {
				return err
			}
			if _, err := w.Write(prefix); err != nil {
				return err
			}
			if _, err := w.Write(mpayload); err != nil {
				return err
			}
			if err := w.Close(); err != nil {
				return err
			}
			_, r, err := ws.NextReader()
			if err != nil {
				return err
			}
			switch mode {
			case readDirect, readUnchecked:
				if _, err := wire.ReadHead(r, nil); err != nil {
					return err
				}
				_, err := wire.ReadTensor(r, update)
				if err == nil && mode == readDirect {
					err = allreduce.CheckFinite(update)
				}
				return err
			}
			buf.Reset()
			if _, err := buf.ReadFrom(r); err != nil {
				return err
			}
			f, err := wire.Decode(buf.Bytes())
			if err != nil {
				return err
			}
			if err := wire.ReadFloat32s(update, f.Payload); err != nil {
				return err
			}
			return allreduce.CheckFinite(update)
		})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	d := websocket.Dialer{ReadBufferSize: readBuf, WriteBufferSize: writeBuf, HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial("ws://"+ln.Addr().String()+"/", nil)
	if err != nil {
		_ = srv.Close()
		return nil, err
	}
	uprefix, _ := wire.Prefix(wire.TypeUpdate, wire.Update{Task: 1, Samples: 600, Loss: 0.5})
	upayload := wire.Float32Bytes(delta)
	go func() {
		global := make([]float32, n)
		for {
			_, r, err := ws.NextReader()
			if err != nil {
				return
			}
			if mode != readBuffered {
				if _, err := wire.ReadHead(r, nil); err != nil {
					return
				}
				read := wire.ReadFiniteTensor
				if mode == readUnchecked {
					read = wire.ReadTensor
				}
				if _, err := read(r, global); err != nil {
					return
				}
			} else {
				b, err := io.ReadAll(r)
				if err != nil {
					return
				}
				f, err := wire.Decode(b)
				if err != nil || wire.ReadFloat32s(global, f.Payload) != nil {
					return
				}
			}
			w, err := ws.NextWriter(websocket.BinaryMessage)
			if err != nil {
				return
			}
			_, _ = w.Write(uprefix)
			_, _ = w.Write(upayload)
			if w.Close() != nil {
				return
			}
		}
	}()
	p.close = func() {
		close(p.quit)
		_ = ws.Close()
		_ = srv.Close()
	}
	return p, nil
}

// startTCPPair connects two TCP sockets on loopback. Per round trip the
// server writes size bytes, the client reads them and writes them back, and
// the server reads them. With check, each side checks what it reads as
// float32 values piece by piece as they arrive, as the trainer reads a
// model (wire.ReadFiniteTensor; the server with allreduce.CheckFinite's
// range check too): the most any protocol that validates tensors could
// reach over the same socket.
func startTCPPair(size int, check bool) (*pair, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	server, ok := <-accepted
	if !ok {
		_ = client.Close()
		return nil, errors.New("loopback accept failed")
	}
	p := newPair()
	out := make([]float32, size/4)
	in := make([]float32, size/4)
	serverCheck, clientCheck := allreduce.CheckFinite, wire.CheckFinite
	if !check {
		serverCheck, clientCheck = nil, nil
	}
	go p.serve(func() error {
		if _, err := server.Write(wire.Float32Bytes(out)); err != nil {
			return err
		}
		return readChecked(server, in, serverCheck)
	})
	go func() {
		buf := make([]float32, size/4)
		for {
			if readChecked(client, buf, clientCheck) != nil {
				return
			}
			if _, err := client.Write(wire.Float32Bytes(buf)); err != nil {
				return
			}
		}
	}()
	p.close = func() {
		close(p.quit)
		_ = client.Close()
		_ = server.Close()
	}
	return p, nil
}

// readChecked fills dst from r as io.ReadFull would, and with a check
// calls it on the values each read completes, as wire.ReadFiniteTensor
// does (which cannot be used here: it reads to the end of a frame, and a
// raw TCP stream has no frames).
func readChecked(r io.Reader, dst []float32, check func([]float32) error) error {
	b := wire.Float32Bytes(dst)
	n, checked := 0, 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if check != nil && n/4 > checked {
			if err := check(dst[checked : n/4]); err != nil {
				return err
			}
			checked = n / 4
		}
		if err != nil && n < len(b) {
			return err
		}
	}
	return nil
}
