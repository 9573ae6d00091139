// Package trainer is the worker side of the protocol: it connects to an
// aggregator, pulls tasks while idle, trains them on the client shards it
// has received and returns the updates. It keeps its shard cache across
// reconnects, so a client's data crosses the network once per trainer.
package trainer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"gonum.org/v1/gonum/blas/blas32"

	"fedgather/internal/data"
	"fedgather/internal/model"
	"fedgather/internal/wire"
)

// Path is the aggregator's websocket endpoint.
const Path = "/v1/train"

// Config configures a trainer.
type Config struct {
	Aggregator string // HOST:PORT or a ws:// or wss:// URL
	Name       string // reported to the aggregator; must be unique per process
	Token      string
	// Slowdown, when above 1, makes each task take that many times its
	// compute time (by sleeping afterwards): a straggler for tests and demos.
	Slowdown   float64
	MaxMessage int64         // largest frame accepted from the aggregator
	MaxRows    int           // largest shard accepted, in rows
	MinBackoff time.Duration // first reconnect delay
	MaxBackoff time.Duration // reconnect delays double up to this
	// GiveUp, when positive, ends Run with ErrGaveUp once the aggregator
	// has not been reached for this long: no connection since the last one
	// ended (or since Run started). Zero keeps trying for ever.
	GiveUp  time.Duration
	Report  time.Duration // how often to print progress
	Metrics *Metrics      // when set, counts tasks, bytes and reconnects for -metrics
	Logger  *slog.Logger
}

// ErrRefused wraps a fatal refusal by the aggregator (wrong token, other
// protocol version) after which reconnecting cannot help.
var ErrRefused = errors.New("refused by the aggregator")

// ErrMismatch wraps a welcome this trainer cannot work with (a model too
// large for one side's message limit), after which reconnecting cannot
// help either.
var ErrMismatch = errors.New("cannot train for this aggregator")

// ErrGaveUp wraps the end of a Run that could not reach the aggregator for
// Config.GiveUp.
var ErrGaveUp = errors.New("gave up reaching the aggregator")

// URL turns the -aggregator argument into the websocket URL to dial.
func URL(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("no aggregator address: give HOST:PORT or a ws:// URL")
	}
	if !strings.Contains(addr, "://") {
		addr = "ws://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("aggregator address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("aggregator address %q: scheme %q, want ws or wss", addr, u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("aggregator address %q has no host", addr)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = Path
	}
	return u.String(), nil
}

// Trainer is one worker's state, kept across reconnects.
type Trainer struct {
	cfg       Config
	url       string
	shards    map[string]*cachedShard // by content hash
	uses      uint64                  // shards received or trained on so far
	spec      model.Spec
	ws        *model.Workspace
	global    []float32      // weights of version
	spare     chan []float32 // a replaced model's buffer, for the next model to be read into
	local     []float32
	grad      []float32
	version   int
	haveModel bool

	done taskTotals // tasks trained in this process's life
}

// New checks cfg and returns a trainer.
func New(cfg Config) (*Trainer, error) {
	u, err := URL(cfg.Aggregator)
	if err != nil {
		return nil, err
	}
	if cfg.Slowdown != 0 && !(cfg.Slowdown >= 1 && cfg.Slowdown <= 1000) {
		return nil, fmt.Errorf("slowdown %v: want a factor between 1 and 1000", cfg.Slowdown)
	}
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = 256 << 20
	}
	if cfg.MaxRows <= 0 {
		cfg.MaxRows = 1 << 22
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.Report <= 0 {
		cfg.Report = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Trainer{cfg: cfg, url: u, shards: make(map[string]*cachedShard), spare: make(chan []float32, 1)}, nil
}

// Run connects and works until the aggregator says the job is done (nil),
// ctx ends (nil), the aggregator refuses this trainer (ErrRefused), its job
// cannot be carried within a message limit (ErrMismatch), or the aggregator
// has not been reached for Config.GiveUp (ErrGaveUp). A dropped connection
// is retried with exponential back-off and jitter.
func (t *Trainer) Run(ctx context.Context) error {
	log := t.cfg.Logger
	first := min(t.cfg.MinBackoff, t.cfg.MaxBackoff)
	backoff := first
	jitter := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	lastReached := time.Now() // when the last connection ended, or Run began
	for {
		start := time.Now()
		err := t.session(ctx)
		de := (*dialError)(nil)
		dialFailed := errors.As(err, &de)
		switch {
		case err == nil:
			log.Info("job done; exiting", "tasks", t.done.tasks, "samples_per_second", t.done.rate())
			return nil
		case ctx.Err() != nil:
			log.Info("stopping", "tasks", t.done.tasks)
			return nil
		case errors.Is(err, ErrRefused), errors.Is(err, ErrMismatch):
			return err
		}
		if !dialFailed {
			lastReached = time.Now()
			if time.Since(start) > 10*time.Second {
				backoff = first // it worked for a while: start over
			}
		}
		// Between half the back-off and all of it: never past MaxBackoff.
		wait := backoff/2 + time.Duration(jitter.Int64N(int64(backoff/2)+1))
		if dialFailed && t.cfg.GiveUp > 0 {
			left := t.cfg.GiveUp - time.Since(lastReached)
			if left <= 0 {
				return fmt.Errorf("%w: no connection for %v (-give-up %v); last error: %w",
					ErrGaveUp, time.Since(lastReached).Round(time.Millisecond), t.cfg.GiveUp, de.err)
			}
			wait = min(wait, left) // one last attempt when the time is up
		}
		t.cfg.Metrics.reconnect()
		var ce *websocket.CloseError
		switch {
		case dialFailed:
			log.Warn("cannot connect to the aggregator; retrying", "err", de.err, "in", wait.Round(time.Millisecond))
		case errors.As(err, &ce) && ce.Code == websocket.CloseGoingAway:
			// An orderly stop (restart, deploy): not a fault, so not a warning.
			log.Info("the aggregator is going away; reconnecting", "reason", ce.Text, "in", wait.Round(time.Millisecond))
		default:
			log.Warn("connection lost; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, t.cfg.MaxBackoff)
	}
}

// dialError is a failure to open the websocket: the aggregator was not
// reached, or did not accept the upgrade.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// taskTotals are the figures of the tasks a trainer trained.
type taskTotals struct {
	tasks   int64
	samples int64         // examples processed (shard rows × epochs)
	compute time.Duration // computing, -slowdown's sleeps excluded
}

func (s *taskTotals) add(samples int64, compute time.Duration) {
	s.tasks++
	s.samples += samples
	s.compute += compute
}

// rate is the training throughput: samples per compute second.
func (s taskTotals) rate() float64 {
	if s.compute <= 0 {
		return 0
	}
	return float64(s.samples) / s.compute.Seconds()
}

// The trainer's websocket buffer sizes. Reads larger than the read buffer
// bypass it, so a model streams straight into its tensor. A whole 2NN
// update fits the write buffer, so it leaves as one websocket frame
// (gorilla masks client frames by copying them through this buffer).
const (
	ReadBufferSize  = 64 << 10
	WriteBufferSize = 1 << 20
)

// errDone ends a session because the job is over.
var errDone = errors.New("job done")

func (t *Trainer) session(ctx context.Context) error {
	dialer := websocket.Dialer{
		ReadBufferSize:   ReadBufferSize,
		WriteBufferSize:  WriteBufferSize,
		HandshakeTimeout: 10 * time.Second,
	}
	ws, resp, err := dialer.DialContext(ctx, t.url, http.Header{})
	if err != nil {
		if resp != nil {
			return &dialError{fmt.Errorf("dial %s: %w (HTTP %s)", t.url, err, resp.Status)}
		}
		return &dialError{fmt.Errorf("dial %s: %w", t.url, err)}
	}
	defer ws.Close()
	defer t.cfg.Metrics.setConnected(false)
	ws.SetReadLimit(t.cfg.MaxMessage)

	if err := t.write(ws, wire.TypeHello, wire.Hello{Name: t.cfg.Name, Token: t.cfg.Token, Shards: t.helloShards()}, nil); err != nil {
		return err
	}

	frames := make(chan inFrame)
	readErr := make(chan error, 1)
	go func() {
		for {
			in, n, err := t.readFrame(ws)
			if err != nil {
				readErr <- err
				return
			}
			t.cfg.Metrics.addReceived(n)
			select {
			case frames <- in:
			case <-ctx.Done():
				return
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "trainer stopping"), time.Now().Add(time.Second))
		_ = ws.Close()
	})
	defer stop()

	report := time.NewTicker(t.cfg.Report)
	defer report.Stop()
	welcomed := false
	// readFailed says why the reader stopped.
	readFailed := func(err error) error {
		if errors.Is(err, wire.ErrVersion) {
			return fmt.Errorf("%w: %v", ErrRefused, err)
		}
		if errors.Is(err, websocket.ErrReadLimit) {
			// A shard, say: the aggregator would send it again.
			return fmt.Errorf("%w: it sent a message larger than this trainer's -max-message %d", ErrMismatch, t.cfg.MaxMessage)
		}
		return err
	}
	// writeFailed says why a write failed: when the reader has closed the
	// connection (a message over the limit, a protocol error) the write
	// finds the close sent, and the reader's error is the reason.
	writeFailed := func(err error) error {
		if errors.Is(err, websocket.ErrCloseSent) {
			select {
			case rerr := <-readErr:
				return readFailed(rerr)
			case <-time.After(time.Second):
			}
		}
		return err
	}
	for {
		var in inFrame
		select {
		case in = <-frames:
		case err := <-readErr:
			return readFailed(err)
		case <-report.C:
			t.cfg.Logger.Info("progress", "tasks", t.done.tasks, "samples_per_second", int(t.done.rate()), "shards_cached", len(t.shards), "version", t.version)
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		f := in.Frame
		if !welcomed && f.Type != wire.TypeWelcome && f.Type != wire.TypeError {
			return fmt.Errorf("aggregator sent %s before welcome", f.Type)
		}
		switch f.Type {
		case wire.TypeWelcome:
			var w wire.Welcome
			if err := f.Parse(&w); err != nil {
				return err
			}
			if err := t.welcome(&w); err != nil {
				return err
			}
			welcomed = true
			t.cfg.Metrics.setConnected(true)
			t.cfg.Logger.Info("connected", "aggregator", t.url, "id", w.ID, "model", w.Model.Name, "params", w.Params)
			if err := t.write(ws, wire.TypePull, wire.Pull{}, nil); err != nil {
				return writeFailed(err)
			}
		case wire.TypeModel:
			// readFrame parsed the header and read exactly m.Params finite
			// values.
			m := in.model
			if m.Params != len(t.global) {
				return fmt.Errorf("model version %d has %d parameters, the job's model %d", m.Version, m.Params, len(t.global))
			}
			// The tensor was read straight from the socket and checked
			// as it arrived; it becomes the held model without a copy,
			// and the one it replaces takes the next model.
			select {
			case t.spare <- t.global:
			default:
			}
			t.global = in.tensor
			t.version, t.haveModel = m.Version, true
		case wire.TypeShard:
			var s wire.Shard
			if err := f.Parse(&s); err != nil {
				return err
			}
			if err := t.shard(&s, f.Payload); err != nil {
				return err
			}
		case wire.TypeTask:
			var task wire.Task
			if err := f.Parse(&task); err != nil {
				return err
			}
			if err := t.task(ws, &task); err != nil {
				return writeFailed(err)
			}
			if err := t.write(ws, wire.TypePull, wire.Pull{}, nil); err != nil {
				return writeFailed(err)
			}
		case wire.TypeDone:
			var d wire.Done
			_ = f.Parse(&d)
			t.cfg.Logger.Info("aggregator says the job is done", "reason", d.Reason)
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(time.Second))
			return nil
		case wire.TypeError:
			var e wire.Error
			if err := f.Parse(&e); err != nil {
				return err
			}
			if e.Fatal {
				err := fmt.Errorf("aggregator: %s: %s", e.Code, e.Message)
				if e.Code == "token" || e.Code == "version" {
					return fmt.Errorf("%w: %v", ErrRefused, err)
				}
				return err
			}
			t.cfg.Logger.Warn("aggregator reports an error", "code", e.Code, "task", e.Task, "err", e.Message)
		default:
			return fmt.Errorf("aggregator sent %s, which only trainers send", f.Type)
		}
	}
}

// inFrame is a frame from the aggregator; a model frame's header is parsed
// into model and its weights decoded into tensor, other payloads stay in
// Frame.Payload.
type inFrame struct {
	wire.Frame
	model  wire.Model
	tensor []float32
}

// readFrame reads one message from the aggregator and reports its size.
func (t *Trainer) readFrame(ws *websocket.Conn) (inFrame, int, error) {
	mt, r, err := ws.NextReader()
	if err != nil {
		return inFrame{}, 0, err
	}
	if mt != websocket.BinaryMessage {
		return inFrame{}, 0, errors.New("text websocket message; the protocol uses binary messages only")
	}
	f, err := wire.ReadHead(r, nil)
	if err != nil {
		return inFrame{}, 0, fmt.Errorf("bad frame from the aggregator: %w", err)
	}
	in := inFrame{Frame: f}
	n := wire.PrefixLen + len(f.Header)
	if f.Type == wire.TypeModel {
		m := &in.model
		if err := f.Parse(m); err != nil {
			return inFrame{}, 0, err
		}
		if m.Params < 0 || int64(m.Params) > t.cfg.MaxMessage/4 {
			return inFrame{}, 0, fmt.Errorf("model version %d announces %d parameters, more than a %d-byte message holds", m.Version, m.Params, t.cfg.MaxMessage)
		}
		select {
		case in.tensor = <-t.spare:
		default:
		}
		if len(in.tensor) != m.Params {
			in.tensor = make([]float32, m.Params)
		}
		k, err := wire.ReadFiniteTensor(r, in.tensor)
		if err != nil {
			return inFrame{}, 0, fmt.Errorf("model version %d: %w", m.Version, err)
		}
		return in, n + k, nil
	}
	if in.Payload, err = io.ReadAll(r); err != nil {
		return inFrame{}, 0, err
	}
	return in, n + len(in.Payload), nil
}

func (t *Trainer) write(ws *websocket.Conn, typ wire.Type, header any, payload []byte) error {
	_ = ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
	w, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		return err
	}
	if err := wire.Write(t.cfg.Metrics.countSent(w), typ, header, payload); err != nil {
		return err
	}
	return w.Close()
}

func (t *Trainer) welcome(w *wire.Welcome) error {
	spec := model.Spec{Name: w.Model.Name, Sizes: w.Model.Sizes}
	if len(spec.Sizes) < 2 {
		return fmt.Errorf("welcome names model %q with layer sizes %v; want at least inputs and classes", w.Model.Name, w.Model.Sizes)
	}
	for _, s := range spec.Sizes {
		if s <= 0 || s > 1<<20 {
			return fmt.Errorf("welcome names model %q with layer sizes %v; want positive sizes", w.Model.Name, w.Model.Sizes)
		}
	}
	if spec.NumParams() != w.Params {
		return fmt.Errorf("welcome says %d parameters, model %v has %d", w.Params, w.Model.Sizes, spec.NumParams())
	}
	need := wire.TensorFrameMax(w.Params)
	if t.cfg.MaxMessage < need {
		return fmt.Errorf("%w: its model %s's frames take up to %d bytes, more than this trainer's -max-message %d", ErrMismatch, spec, need, t.cfg.MaxMessage)
	}
	if w.MaxMessage > 0 && w.MaxMessage < need {
		return fmt.Errorf("%w: its model %s's updates take up to %d bytes, more than the %d bytes it accepts (its -max-message)", ErrMismatch, spec, need, w.MaxMessage)
	}
	if t.ws != nil && t.spec.Equal(spec) {
		return nil // same job as before the reconnect
	}
	t.spec = spec
	t.ws = model.NewWorkspace(spec, 128)
	t.global = make([]float32, w.Params)
	t.local = make([]float32, w.Params)
	t.grad = make([]float32, w.Params)
	t.haveModel = false
	dim, classes := spec.Sizes[0], spec.Sizes[len(spec.Sizes)-1]
	for h, c := range t.shards {
		if c.ds.Dim != dim || c.ds.Classes != classes {
			delete(t.shards, h)
		}
	}
	return nil
}

func (t *Trainer) shard(s *wire.Shard, payload []byte) error {
	sum := sha256.Sum256(payload)
	if got := hex.EncodeToString(sum[:]); got != s.Hash {
		return fmt.Errorf("shard payload hashes to %s, header says %s", got, s.Hash)
	}
	if s.Rows < 0 || s.Rows > t.cfg.MaxRows {
		return fmt.Errorf("shard %s: header says %d rows, expected 0 to %d", s.Hash[:12], s.Rows, t.cfg.MaxRows)
	}
	// The header's row count bounds what decoding may reserve.
	dim, classes := t.spec.Sizes[0], t.spec.Sizes[len(t.spec.Sizes)-1]
	ds, err := data.DecodeShard(payload, dim, classes, s.Rows)
	if err != nil {
		return fmt.Errorf("shard %s: %w", s.Hash[:12], err)
	}
	if ds.Len() != s.Rows {
		return fmt.Errorf("shard %s has %d rows, header says %d", s.Hash[:12], ds.Len(), s.Rows)
	}
	c := &cachedShard{ds: ds}
	t.shards[s.Hash] = c
	t.use(c)
	return nil
}

// cachedShard is a decoded client shard the trainer keeps for its life.
type cachedShard struct {
	ds   *data.Dataset
	used uint64 // the trainer's use count when it was last received or trained on
}

// use records that c was just received or trained on.
func (t *Trainer) use(c *cachedShard) {
	t.uses++
	c.used = t.uses
}

// maxHelloShards bounds how many cached shards a hello announces: a hash
// takes 67 bytes of the header, which must stay within wire.MaxHeader
// (64 KiB, about 970 hashes) whatever the cache holds. The aggregator sends
// any shard it needs that was not announced.
const maxHelloShards = 512

// helloShards lists the cached shards to announce in hello, the most
// recently used first, at most maxHelloShards.
func (t *Trainer) helloShards() []string {
	hashes := make([]string, 0, len(t.shards))
	for h := range t.shards {
		hashes = append(hashes, h)
	}
	slices.SortFunc(hashes, func(a, b string) int { return cmp.Compare(t.shards[b].used, t.shards[a].used) })
	return hashes[:min(len(hashes), maxHelloShards)]
}

// task trains one client's shard and sends the update. A task the trainer
// cannot do is reported with an Error frame, and the connection goes on.
func (t *Trainer) task(ws *websocket.Conn, task *wire.Task) error {
	var ds *data.Dataset
	if c := t.shards[task.Shard]; c != nil {
		t.use(c)
		ds = c.ds
	}
	var problem string
	switch {
	case !t.haveModel || t.version != task.Version:
		problem = fmt.Sprintf("task %d needs model version %d, this trainer holds %d", task.ID, task.Version, t.version)
	case ds == nil:
		problem = fmt.Sprintf("task %d needs shard %s, which this trainer does not hold", task.ID, task.Shard)
	case ds.Len() != task.Rows:
		problem = fmt.Sprintf("task %d says %d rows, shard has %d", task.ID, task.Rows, ds.Len())
	case task.Mode != "fedavg" && task.Mode != "fedsgd" && task.Mode != "eval":
		problem = fmt.Sprintf("task %d mode %q: want fedavg, fedsgd or eval", task.ID, task.Mode)
	case task.Mode != "eval" && (task.Epochs < 1 || task.Batch < 0 || !(task.LR > 0)):
		problem = fmt.Sprintf("task %d has epochs %d, batch %d, lr %v; want epochs ≥ 1, batch ≥ 0, lr > 0", task.ID, task.Epochs, task.Batch, task.LR)
	}
	if problem != "" {
		return t.write(ws, wire.TypeError, wire.Error{Code: "task", Message: problem, Task: task.ID}, nil)
	}
	if task.Mode == "eval" {
		return t.evaluate(ws, task, ds)
	}
	t.cfg.Logger.Debug("training", "task", task.ID, "round", task.Round, "client", task.Client, "rows", task.Rows)
	start := time.Now()
	var loss float64
	if task.Mode == "fedsgd" {
		loss = t.ws.Gradient(t.global, t.grad, ds)
		copy(t.local, t.grad)
		blas32.Scal(-task.LR, vector(t.local))
	} else {
		copy(t.local, t.global)
		loss = t.ws.SGD(t.local, ds, task.Epochs, task.Batch, task.LR, task.Seed)
		// Δw = local − global, as local += −1·global: gonum's axpy is
		// vectorised (about 5× a Go loop over the 2NN's 199,210 values)
		// and gives the subtraction's result bit for bit, −1·g being exact.
		blas32.Axpy(-1, vector(t.global), vector(t.local))
	}
	took := time.Since(start)
	t.slowDown(took)
	samples := int64(ds.Len() * task.Epochs)
	t.done.add(samples, took)
	t.cfg.Metrics.taskDone(samples, took)
	u := wire.Update{Task: task.ID, Round: task.Round, Version: task.Version, Client: task.Client, Samples: ds.Len(), Loss: loss, Seconds: took.Seconds()}
	return t.write(ws, wire.TypeUpdate, u, wire.Float32Bytes(t.local))
}

// vector is v as a gonum BLAS vector.
func vector(v []float32) blas32.Vector { return blas32.Vector{N: len(v), Inc: 1, Data: v} }

// slowDown makes a task that computed for took last Slowdown times as
// long (-slowdown, for tests of stragglers).
func (t *Trainer) slowDown(took time.Duration) {
	if t.cfg.Slowdown > 1 {
		time.Sleep(time.Duration(float64(took) * (t.cfg.Slowdown - 1)))
	}
}

// evaluate runs an eval task: the held model version on one test shard.
func (t *Trainer) evaluate(ws *websocket.Conn, task *wire.Task, ds *data.Dataset) error {
	t.cfg.Logger.Debug("evaluating", "task", task.ID, "round", task.Round, "shard", task.Client, "rows", task.Rows)
	start := time.Now()
	acc, loss := t.ws.Evaluate(t.global, ds)
	took := time.Since(start)
	t.slowDown(took)
	u := wire.Update{Task: task.ID, Round: task.Round, Version: task.Version, Client: task.Client, Samples: ds.Len(),
		Loss: loss, Correct: int(math.Round(acc * float64(ds.Len()))), Seconds: took.Seconds()}
	return t.write(ws, wire.TypeUpdate, u, nil)
}
