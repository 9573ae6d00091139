// Package coord is the aggregator's hub: it owns the trainer connections,
// the current round's task queue and the accumulator the round's updates
// are folded into.
//
// Trainers pull: a trainer that is idle says so, and the hub hands it the
// next queued task, preceded by the model version and the client's shard
// if that trainer does not hold them yet. A task whose trainer disconnects
// goes back to the front of the queue; a task running longer than its
// deadline is issued once more to the next idle trainer, and whichever copy
// finishes first is counted, the other discarded as a duplicate. Every
// task's update is therefore folded exactly once.
//
// All shared state is guarded by one mutex that is never held across
// network I/O: each connection has one writer goroutine that drains a
// queue of frames, and one reader goroutine.
package coord

import (
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/allreduce"
	"fedgather/internal/wire"
)

// Shard is one logical client's data as it travels: an Arrow IPC stream.
type Shard struct {
	Hash  string // hex SHA-256 of Bytes
	Rows  int    // n_k
	Bytes []byte
}

// Config is what the hub needs to know of the job.
type Config struct {
	Model  wire.ModelSpec
	Params int     // parameters of the model
	Shards []Shard // indexed by client
	// EvalShards are the test set's shards, for eval tasks (RoundSpec.Evaluate).
	EvalShards []Shard
	Token      string // when set, trainers must present it
	MaxMessage int64  // largest frame accepted from a trainer

	PingPeriod time.Duration // how often to ping each trainer
	PongWait   time.Duration // a trainer silent this long is dropped

	// TaskDeadline, when positive, is how long a task may run before it is
	// issued again to an idle trainer. When zero it is derived from the
	// trainers' measured speed: StragglerFactor times the median task time
	// of recent tasks, and never less than MinDeadline.
	TaskDeadline    time.Duration
	StragglerFactor float64
	MinDeadline     time.Duration
	// MaxFailures is how many rejected results a task may have before it is
	// dropped from its round; MaxLost is how many trainers may disconnect
	// while holding it.
	MaxFailures int
	MaxLost     int

	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.MaxMessage <= 0 {
		c.MaxMessage = 256 << 20
	}
	if c.PingPeriod <= 0 {
		c.PingPeriod = 5 * time.Second
	}
	if c.PongWait <= 0 {
		c.PongWait = 3 * c.PingPeriod
	}
	if c.StragglerFactor <= 0 {
		c.StragglerFactor = 2
	}
	if c.MinDeadline <= 0 {
		c.MinDeadline = 50 * time.Millisecond
	}
	if c.MaxFailures <= 0 {
		c.MaxFailures = 3
	}
	if c.MaxLost <= 0 {
		c.MaxLost = 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Hub coordinates trainers. Create it with New, serve its Handler, and run
// rounds with RunRound.
type Hub struct {
	cfg Config

	mu        sync.Mutex
	conns     map[*conn]struct{}
	idle      []*conn
	round     *round
	finished  *wire.Done
	leaving   string // set by GoAway: why every connection is closed
	nextTask  int64
	nextConn  int
	changed   chan struct{}      // closed and replaced whenever the set of trainers changes
	durations [2]recent          // recent task seconds by kind (training, eval), for the derived deadlines
	enc       wire.HeaderEncoder // encodes task frames, under mu
	// tasks holds the running round's task records, and the last round's
	// until the next one reuses them: nothing outside a round refers to a
	// task but by its ID, which the round looks up.
	tasks        []task
	order, queue []*task // storage for the round's order and queue, reused likewise
	stats        Stats
	trainers     map[string]*trainerRecord // by name, kept across reconnects
	// updates holds the buffers for updates being read off the network:
	// at most UpdateReads at a time, allocated on first use, so gathering
	// needs a few model-sized buffers whatever the number of trainers.
	updates chan []float32
	acc     *allreduce.Accumulator // reused round after round
	models  chan *modelBuf         // free buffers for the rounds' outgoing models
	// known maps the hash of every shard, training and eval, to its shard
	// frame's prefix and header, encoded once: they never change.
	known map[string][]byte
}

// modelBuf holds one round's weights while model frames carry them. The
// round holds one reference and every queued model frame one more, since a
// writer may still be sending the model to a straggler after its round
// closed; the last release returns the buffer to the hub, and the next
// round copies its weights into it instead of allocating a model-sized
// slice (and leaving the garbage collector a model a round).
//
// Room is kept before the weights for the frame's prefix and header, so
// that a model frame is one slice: gorilla/websocket then sends it as one
// websocket frame in one write, where a prefix and a large payload written
// apart make a fragmented message with an empty final frame. A later round
// writes over both once the last reference is released.
type modelBuf struct {
	hub  *Hub
	all  []float32 // modelHeadroom bytes, then the weights
	v    []float32 // the weights, the end of all
	refs atomic.Int32
}

// modelHeadroom is the room before a model buffer's weights, in bytes, a
// multiple of 4: a model frame's prefix and header take about 40, and 68
// at the very most.
const modelHeadroom = 128

// frame returns the model frame for prefix p (a model frame's prefix and
// header): p copied in just before the weights, and the weights. It
// reports false if p does not fit.
func (b *modelBuf) frame(p []byte) ([]byte, bool) {
	if len(p) > modelHeadroom {
		return nil, false
	}
	all := wire.Float32Bytes(b.all)
	start := modelHeadroom - len(p)
	copy(all[start:], p)
	return all[start:], true
}

// freeModels is how many idle model buffers the hub keeps for later
// rounds: each round takes one, and a model still being written to a
// straggler keeps its own a while longer.
const freeModels = 2

// newModelBuf returns a buffer holding a copy of v, with one reference.
func (h *Hub) newModelBuf(v []float32) *modelBuf {
	var b *modelBuf
	select {
	case b = <-h.models:
	default:
		all := make([]float32, modelHeadroom/4+len(v))
		b = &modelBuf{hub: h, all: all, v: all[modelHeadroom/4:]}
	}
	copy(b.v, v)
	b.refs.Store(1)
	return b
}

// hold adds a reference to b; nil is no buffer.
func (b *modelBuf) hold() {
	if b != nil {
		b.refs.Add(1)
	}
}

// release drops a reference to b, returning it to the hub with the last.
func (b *modelBuf) release() {
	if b == nil {
		return
	}
	switch n := b.refs.Add(-1); {
	case n == 0:
		select {
		case b.hub.models <- b:
		default: // enough are free; the collector takes this one
		}
	case n < 0:
		panic("coord: model buffer released more often than held")
	}
}

// deadlineTick is how often a running round looks for tasks past their
// deadline: a fraction of the smallest derived deadline (MinDeadline's
// default, 50 ms), so that a straggler's task is re-issued soon after its
// deadline rather than up to a whole tick later.
const deadlineTick = 10 * time.Millisecond

// UpdateReads bounds how many updates are read off the network at once;
// other trainers' updates wait in their sockets meanwhile.
const UpdateReads = 4

// New returns a hub for the job described by cfg.
func New(cfg Config) (*Hub, error) {
	cfg.defaults()
	if cfg.Params <= 0 {
		return nil, fmt.Errorf("hub needs the model's parameter count, got %d", cfg.Params)
	}
	if len(cfg.Shards) == 0 {
		return nil, errors.New("hub needs at least one client shard")
	}
	h := &Hub{
		cfg:      cfg,
		conns:    make(map[*conn]struct{}),
		changed:  make(chan struct{}),
		trainers: make(map[string]*trainerRecord),
		known:    make(map[string][]byte, len(cfg.Shards)+len(cfg.EvalShards)),
	}
	for _, s := range slices.Concat(cfg.Shards, cfg.EvalShards) {
		p, err := wire.Prefix(wire.TypeShard, wire.Shard{Hash: s.Hash, Rows: s.Rows})
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Hash, err)
		}
		h.known[s.Hash] = p
	}
	h.models = make(chan *modelBuf, freeModels)
	h.updates = make(chan []float32, UpdateReads)
	for range UpdateReads {
		h.updates <- nil
	}
	return h, nil
}

// RoundSpec describes one round.
type RoundSpec struct {
	Round   int
	Version int
	Model   []float32 // global weights of Version; copied, not retained
	Clients []int     // selected clients, one task each
	Quorum  int       // training results the round needs; 0 means all of Clients
	Mode    string    // "fedavg" or "fedsgd"
	Epochs  int
	Batch   int
	LR      float32
	Seed    uint64 // job seed; each task's seed derives from it, the round and the client
	// Evaluate adds one eval task per test shard (Config.EvalShards) to the
	// round: each evaluates Model on its shard, and the result carries
	// Correct, EvalSamples and EvalLoss. A round may train, evaluate or
	// both; the job evaluates each new version in the same round as it
	// trains from it, so that a round has one gather, not two. Eval tasks
	// queue after the training tasks: being shorter, they fill the tail.
	Evaluate bool
	// Mean, when not nil, receives the round's mean update and must hold
	// one value per parameter (RoundResult.Mean is then Mean); when nil the
	// hub allocates one. A caller running round after round passes the
	// same buffer each time.
	Mean []float32
}

// RoundResult is what a round gathered.
type RoundResult struct {
	Mean      []float32 // weighted mean of the updates (Δw)
	Updates   int       // updates folded
	Samples   int64     // Σ n_k of the folded updates
	TrainLoss float64   // sample-weighted mean training loss
	Seconds   float64   // wall time of the round
	Tasks     map[string]int
	// Rates is each trainer's measured training throughput in this round:
	// examples processed (n_k·E) per second of its reported compute time.
	Rates   map[string]float64
	Dropped []int // clients whose task was given up after too many failures

	// Evaluation (RoundSpec.Evaluate): test examples evaluated and
	// classified correctly, and the mean test loss, summed in task order so
	// the figures are reproducible. EvalSamples falls short of the test
	// set only when an eval task was dropped after repeated failures.
	EvalSamples int64
	Correct     int64
	EvalLoss    float64

	Assigned, Completed, Failed, Requeued, Reissued, Duplicates int
}

type taskState uint8

const (
	queued taskState = iota
	running
	done
	dropped  // given up after too many failures
	unneeded // an over-selected training task whose round has its quorum
)

type task struct {
	wire     wire.Task
	shard    *Shard
	eval     bool // evaluates the model on a test shard; no update
	state    taskState
	inQueue  bool
	running  []attempt       // attempts in flight: the first, and a copy issued past its deadline
	failedBy map[string]bool // names of trainers whose result for this task was rejected; nil until one is
	failures int
	lost     int

	// an eval task's result
	correct int
	loss    float64

	runBuf [2]attempt // running's first two, so most tasks allocate nothing for it
}

// trainerRecord is what the hub keeps of a trainer name: its totals and
// its figures in the latest round it had a result counted in.
type trainerRecord struct {
	name  string
	total TrainerStats
	round int64        // that round's first task ID: it identifies the round
	tasks int          // results counted in that round
	busy  TrainerStats // that round's training tasks that reported their compute time
}

// in returns t with its round figures for r, starting them (and listing t
// among r's active trainers) at its first result in r.
func (t *trainerRecord) in(r *round) *trainerRecord {
	if t.round != r.first {
		t.round, t.tasks, t.busy = r.first, 0, TrainerStats{}
		r.active = append(r.active, t)
	}
	return t
}

// attempt is one trainer's run of a task.
type attempt struct {
	c       *conn
	started time.Time
}

// attemptBy returns the index in t.running of c's attempt, or -1.
func (t *task) attemptBy(c *conn) int {
	return slices.IndexFunc(t.running, func(a attempt) bool { return a.c == c })
}

// stop ends c's attempt at t, if it has one, and returns when it started.
func (t *task) stop(c *conn) (started time.Time, ok bool) {
	i := t.attemptBy(c)
	if i < 0 {
		return time.Time{}, false
	}
	started = t.running[i].started
	t.running = slices.Delete(t.running, i, i+1)
	return started, true
}

// failed records that name's result for t was rejected.
func (t *task) failed(name string) {
	if t.failedBy == nil {
		t.failedBy = make(map[string]bool)
	}
	t.failedBy[name] = true
}

type round struct {
	spec     RoundSpec
	model    outFrame
	order    []*task // every task, by ID: the first's is first
	queue    []*task
	acc      *allreduce.Accumulator // nil when the round only evaluates
	folded   int                    // training results counted
	first    int64                  // id of the round's first task; older ids are stale
	active   []*trainerRecord       // trainers with a result counted this round
	needed   int
	res      RoundResult
	finished chan struct{}
	closed   bool
	start    time.Time
}

// TaskSeed derives the seed of one client's local training in one round
// from the job seed, so that a client's update does not depend on which
// trainer computed it.
func TaskSeed(seed uint64, round, client int) uint64 {
	x := seed ^ 0x9e3779b97f4a7c15*uint64(round+1) ^ 0xbf58476d1ce4e5b9*uint64(client+1)
	x ^= x >> 31
	x *= 0x94d049bb133111eb
	x ^= x >> 29
	return x
}

// RunRound scatters one task per selected client (and, with Evaluate, one
// eval task per test shard), gathers the results and returns the weighted
// mean update once Quorum training results and every eval result are in.
// It returns early only when ctx ends.
func (h *Hub) RunRound(ctx context.Context, spec RoundSpec) (*RoundResult, error) {
	if len(spec.Model) != h.cfg.Params {
		return nil, fmt.Errorf("round %d model has %d parameters, the job %d", spec.Round, len(spec.Model), h.cfg.Params)
	}
	if spec.Mean != nil && len(spec.Mean) != h.cfg.Params {
		return nil, fmt.Errorf("round %d mean buffer has %d values, the job's model %d", spec.Round, len(spec.Mean), h.cfg.Params)
	}
	if len(spec.Clients) == 0 && !spec.Evaluate {
		return nil, fmt.Errorf("round %d selects no client and evaluates nothing", spec.Round)
	}
	if spec.Evaluate && len(h.cfg.EvalShards) == 0 {
		return nil, fmt.Errorf("round %d evaluates, but the hub has no test shards", spec.Round)
	}
	needed := spec.Quorum
	if needed <= 0 || needed > len(spec.Clients) {
		needed = len(spec.Clients)
	}
	shards := h.cfg.Shards
	var total int64
	for _, k := range spec.Clients {
		if k < 0 || k >= len(shards) {
			return nil, fmt.Errorf("round %d selects client %d of %d", spec.Round, k, len(shards))
		}
		total += int64(shards[k].Rows)
	}
	mp, err := wire.Prefix(wire.TypeModel, wire.Model{Version: spec.Version, Params: len(spec.Model)})
	if err != nil {
		return nil, err
	}
	model := h.newModelBuf(spec.Model)
	defer model.release() // the round's reference; queued frames hold theirs
	mf := outFrame{prefix: mp, payload: wire.Float32Bytes(model.v), model: model}
	if f, ok := model.frame(mp); ok { // always: the header fits in modelHeadroom
		mf = outFrame{prefix: f, model: model}
	}
	r := &round{
		spec:     spec,
		model:    mf,
		needed:   needed,
		finished: make(chan struct{}),
		start:    time.Now(),
	}

	h.mu.Lock()
	if h.round != nil {
		h.mu.Unlock()
		return nil, fmt.Errorf("round %d started while round %d is running", spec.Round, h.round.spec.Round)
	}
	if len(spec.Clients) > 0 {
		// One accumulator serves every round: rounds never overlap.
		var err error
		if h.acc == nil {
			h.acc, err = allreduce.NewAccumulator(h.cfg.Params, total)
		} else {
			err = h.acc.ResetFor(total)
		}
		if err != nil {
			h.mu.Unlock()
			return nil, err
		}
		r.acc = h.acc
	}
	r.first = h.nextTask + 1
	n := len(spec.Clients)
	if spec.Evaluate {
		n += len(h.cfg.EvalShards)
	}
	if cap(h.tasks) < n {
		h.tasks = make([]task, n)
		h.order, h.queue = make([]*task, 0, n), make([]*task, 0, n)
	}
	r.order, r.queue = h.order[:0], h.queue[:0]
	clear(h.tasks[n:cap(h.tasks)]) // records a smaller round leaves unused hold nothing
	h.tasks = h.tasks[:n]
	add := func(sh *Shard, w wire.Task, eval bool) {
		h.nextTask++
		w.ID, w.Round, w.Version, w.Shard, w.Rows = h.nextTask, spec.Round, spec.Version, sh.Hash, sh.Rows
		t := &h.tasks[len(r.order)]
		*t = task{wire: w, shard: sh, eval: eval, inQueue: true}
		t.running = t.runBuf[:0]
		r.order = append(r.order, t)
		r.queue = append(r.queue, t)
	}
	for _, k := range spec.Clients {
		add(&shards[k], wire.Task{Client: k, Mode: spec.Mode, Epochs: spec.Epochs, Batch: spec.Batch,
			LR: spec.LR, Seed: TaskSeed(spec.Seed, spec.Round, k)}, false)
	}
	if spec.Evaluate {
		for k := range h.cfg.EvalShards {
			add(&h.cfg.EvalShards[k], wire.Task{Client: k, Mode: "eval"}, true)
		}
	}
	h.round = r
	h.dispatchLocked()
	h.mu.Unlock()

	tick := time.NewTicker(deadlineTick)
	defer tick.Stop()
	for {
		select {
		case <-r.finished:
			return h.closeRound(r), nil
		case <-ctx.Done():
			h.mu.Lock()
			h.round = nil
			h.mu.Unlock()
			return nil, ctx.Err()
		case <-tick.C:
			h.mu.Lock()
			h.checkDeadlinesLocked(time.Now())
			h.mu.Unlock()
		}
	}
}

func (h *Hub) closeRound(r *round) *RoundResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.round = nil
	res := r.res
	res.Seconds = time.Since(r.start).Seconds()
	res.Updates = r.folded
	// Losses and counts are summed in task order, so the figures do not
	// depend on the order results arrived in.
	var trainLoss, evalLoss float64
	for _, t := range r.order {
		rows := int64(t.wire.Rows)
		switch {
		case t.state == dropped && !t.eval:
			res.Dropped = append(res.Dropped, t.wire.Client)
		case t.state != done:
		case t.eval:
			res.EvalSamples += rows
			res.Correct += int64(t.correct)
			evalLoss += t.loss * float64(rows)
		default:
			res.Samples += rows
			trainLoss += t.loss * float64(rows)
		}
		// The round is over: its records let go of the trainers that ran
		// them (over-selected tasks end with attempts still in flight).
		t.running, t.runBuf, t.failedBy = nil, [2]attempt{}, nil
	}
	if res.Samples > 0 {
		res.Mean = r.spec.Mean
		if res.Mean == nil {
			res.Mean = make([]float32, h.cfg.Params)
		}
		// The mean is the accumulator's last use this round: it is left
		// empty in the same pass, for the next round.
		_ = r.acc.MeanAndReset(res.Mean) // cannot fail: sizes match and weight > 0
		res.TrainLoss = trainLoss / float64(res.Samples)
	}
	if res.EvalSamples > 0 {
		res.EvalLoss = evalLoss / float64(res.EvalSamples)
	}
	// The per-trainer maps are made once, at their size, from records the
	// hub keeps, rather than grown result by result.
	res.Tasks = make(map[string]int, len(r.active))
	res.Rates = make(map[string]float64, len(r.active))
	for _, t := range r.active {
		res.Tasks[t.name] = t.tasks
		if t.busy.Seconds > 0 {
			res.Rates[t.name] = t.busy.SamplesPerSecond()
		}
	}

	return &res
}

// deadlineLocked is how long a task of the kind given (eval or training)
// may run before it is issued again: TaskDeadline when set, else
// StragglerFactor times the median of that kind's recent task times, at
// least MinDeadline; 0 (no speculation) while none has been measured.
func (h *Hub) deadlineLocked(eval bool) time.Duration {
	if h.cfg.TaskDeadline > 0 {
		return h.cfg.TaskDeadline
	}
	var buf [len(recent{}.v)]float64
	s := h.durations[kind(eval)].values(buf[:0])
	if len(s) == 0 {
		return 0
	}
	sort.Float64s(s)
	return max(time.Duration(h.cfg.StragglerFactor*s[len(s)/2]*float64(time.Second)), h.cfg.MinDeadline)
}

// recent keeps the latest task times, up to 64.
type recent struct {
	v [64]float64
	n int // values added, ever; the latest is v[(n-1)%len(v)]
}

func (r *recent) add(x float64) {
	r.v[r.n%len(r.v)] = x
	r.n++
}

// values appends the kept values to dst, in no particular order.
func (r *recent) values(dst []float64) []float64 {
	return append(dst, r.v[:min(r.n, len(r.v))]...)
}

// kind indexes per-kind figures: 0 for training tasks, 1 for eval tasks.
func kind(eval bool) int {
	if eval {
		return 1
	}
	return 0
}

// checkDeadlinesLocked queues one more copy of a task that has run past
// its deadline on all of its trainers, so an idle trainer can take it over.
// Like MapReduce's backup tasks this happens only at the tail of a round —
// when no task is waiting for its first trainer —, never for more tasks
// than there are idle trainers to take them, and not while every update
// buffer is taken, so a loaded aggregator does not mistake its own delays
// for stragglers and flood the trainers with copies.
func (h *Hub) checkDeadlinesLocked(now time.Time) {
	r := h.round
	if r == nil || r.closed {
		return
	}
	spare := len(h.idle)
	for _, t := range r.queue {
		if t.state == queued {
			return // originals still wait: no trainer is free for copies
		}
		if t.state == running {
			spare-- // a copy already waits for a trainer
		}
	}
	if spare <= 0 {
		return
	}
	// Nor while every update buffer is taken: then results wait for the
	// aggregator to read them, and a task that looks late is most likely
	// done, its update in a socket, not held up by its trainer.
	if len(h.updates) == 0 {
		return
	}
	// Only now, at a round's tail with a trainer free, are the deadlines
	// (a sort of recent task times each) worth computing.
	limits := [2]time.Duration{h.deadlineLocked(false), h.deadlineLocked(true)}
	if limits[0] <= 0 && limits[1] <= 0 {
		return
	}
	for _, t := range r.order {
		if spare <= 0 {
			break
		}
		limit := limits[kind(t.eval)]
		if t.state != running || t.inQueue || len(t.running) >= 2 || limit <= 0 {
			continue
		}
		late := true
		for _, a := range t.running {
			if now.Sub(a.started) < limit {
				late = false
			}
		}
		if late {
			spare--
			t.inQueue = true
			r.queue = append(r.queue, t)
			r.res.Reissued++
			h.stats.TasksReissued++
			h.cfg.Logger.Info("task past its deadline, issuing again", "round", r.spec.Round, "client", t.wire.Client, "deadline", limit)
		}
	}
	h.dispatchLocked()
}

// dispatchLocked hands queued tasks to idle trainers, oldest idle first.
// Each idle trainer gets the first queued task it may take (see
// mayTakeLocked); finished tasks are purged from the queue on the way.
func (h *Hub) dispatchLocked() {
	r := h.round
	if r == nil || r.closed {
		return
	}
	for i := 0; i < len(h.idle) && len(r.queue) > 0; {
		cn := h.idle[i]
		j := h.pickLocked(r, cn)
		if j < 0 {
			i++
			continue
		}
		t := r.queue[j]
		r.queue = append(r.queue[:j], r.queue[j+1:]...)
		t.inQueue = false
		h.idle = append(h.idle[:i], h.idle[i+1:]...)
		if !h.assignLocked(cn, r, t) {
			// The trainer went away while we wrote to it; its reader
			// will drop it. The task goes back to the front.
			t.inQueue = true
			r.queue = slices.Insert(r.queue, 0, t)
		}
	}
}

// pickLocked returns the index in the queue of the task cn should take
// next, or -1: the first task it may take — training tasks are queued
// before eval tasks, so they go first — or, better, a task of the same kind
// whose shard cn already holds (data locality: no transfer, no decoding).
// Which trainer runs a task never changes its result.
func (h *Hub) pickLocked(r *round, cn *conn) int {
	first := -1
	for j := 0; j < len(r.queue); j++ {
		t := r.queue[j]
		if t.state == done || t.state == dropped || t.state == unneeded {
			t.inQueue = false
			r.queue = append(r.queue[:j], r.queue[j+1:]...)
			j--
			continue
		}
		if !h.mayTakeLocked(t, cn) {
			continue
		}
		if first < 0 {
			first = j
		}
		if t.eval != r.queue[first].eval {
			break // no task of the first one's kind left that cn holds
		}
		if cn.shards[t.shard.Hash] {
			return j
		}
	}
	return first
}

// mayTakeLocked reports whether cn may be given t: not while it already
// runs a copy, and not after its result for t was rejected — unless every
// connected trainer has failed t, so that a task is retried rather than
// stranded when few trainers remain.
func (h *Hub) mayTakeLocked(t *task, cn *conn) bool {
	if t.attemptBy(cn) >= 0 {
		return false
	}
	if !t.failedBy[cn.name] {
		return true
	}
	for c := range h.conns {
		if !t.failedBy[c.name] {
			return false
		}
	}
	return true
}

// assignLocked sends a task, and what the trainer lacks to do it, to cn.
// It reports false when cn can no longer be written to.
func (h *Hub) assignLocked(cn *conn, r *round, t *task) bool {
	cn.idle = false
	if cn.version != r.spec.Version {
		if !cn.send(r.model) {
			return false
		}
		cn.version = r.spec.Version
		h.stats.ModelsSent++
	}
	if !cn.shards[t.shard.Hash] {
		if !cn.send(outFrame{prefix: h.known[t.shard.Hash], payload: t.shard.Bytes}) {
			return false
		}
		cn.shards[t.shard.Hash] = true
		h.stats.ShardsSent++
	}
	p, err := h.enc.AppendPrefix(cn.frameBuf(), wire.TypeTask, &t.wire)
	if err != nil || !cn.send(outFrame{prefix: p, reuse: true}) {
		return false
	}
	t.state = running
	t.running = append(t.running, attempt{cn, time.Now()})
	cn.task = t.wire.ID
	r.res.Assigned++
	h.stats.TasksAssigned++
	return true
}

// requeueLocked puts a task whose last attempt ended without a result back
// at the front of the queue, or drops it when it has failed too often.
func (h *Hub) requeueLocked(r *round, t *task) {
	if t.state != running || len(t.running) > 0 {
		return
	}
	if t.failures >= h.cfg.MaxFailures || t.lost >= h.cfg.MaxLost {
		t.state = dropped
		h.stats.TasksDropped++
		h.cfg.Logger.Warn("task dropped from its round", "round", r.spec.Round, "client", t.wire.Client, "failures", t.failures, "lost", t.lost)
		h.maybeFinishLocked(r)
		return
	}
	t.state = queued
	if !t.inQueue {
		t.inQueue = true
		r.queue = slices.Insert(r.queue, 0, t)
	}
	r.res.Requeued++
	h.stats.TasksRequeued++
	h.dispatchLocked()
}

// maybeFinishLocked closes the round once enough training results are in
// and every eval task has its result, or once nothing is left that could
// still produce one.
func (h *Hub) maybeFinishLocked(r *round) {
	if r.closed {
		return
	}
	for _, t := range r.order {
		if (t.state == queued || t.state == running) && (t.eval || r.folded < r.needed) {
			return
		}
	}
	r.closed = true
	close(r.finished)
}

// Snapshot returns the hub's counters and per-trainer figures.
func (h *Hub) Snapshot() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.stats
	s.TrainersConnected = len(h.conns)
	s.Trainers = make(map[string]TrainerStats, len(h.trainers))
	for name, t := range h.trainers {
		s.Trainers[name] = t.total
	}
	return s
}

// Trainers returns the number of connected trainers.
func (h *Hub) Trainers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// WaitTrainers blocks until at least n trainers are connected or ctx ends.
func (h *Hub) WaitTrainers(ctx context.Context, n int) error {
	return h.waitConns(ctx, func(have int) bool { return have >= n }, func(have int) string {
		return fmt.Sprintf("waiting for %d trainers (have %d)", n, have)
	})
}

// WaitGone blocks until no trainer is connected or ctx ends. After Finish
// it lets the done frames reach the trainers before the process exits.
func (h *Hub) WaitGone(ctx context.Context) error {
	return h.waitConns(ctx, func(have int) bool { return have == 0 }, func(have int) string {
		return fmt.Sprintf("%d trainers still connected", have)
	})
}

// waitConns waits until ok holds for the number of connected trainers,
// or until ctx ends, when the error says what(have) and wraps ctx's error.
func (h *Hub) waitConns(ctx context.Context, ok func(have int) bool, what func(have int) string) error {
	for {
		h.mu.Lock()
		have, ch := len(h.conns), h.changed
		h.mu.Unlock()
		if ok(have) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what(have), ctx.Err())
		}
	}
}

func (h *Hub) changedLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Finish tells every connected trainer, and every one that connects later,
// that the job is over.
func (h *Hub) Finish(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finished = &wire.Done{Reason: reason}
	p, _ := wire.Prefix(wire.TypeDone, h.finished)
	for cn := range h.conns {
		cn.send(outFrame{prefix: p})
	}
}

// GoAway closes every trainer's connection, and every one that connects
// later, with a "going away" close frame whose text is reason: the
// aggregator is stopping before the job is done, and a restarted
// aggregator (-state) will carry it on. Unlike after Finish, trainers
// keep reconnecting.
func (h *Hub) GoAway(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leaving = truncate(cmp.Or(reason, "going away"), 120) // an ASCII reason: truncate cuts bytes
	for cn := range h.conns {
		cn.sendLast(outFrame{close: websocket.CloseGoingAway, reason: h.leaving})
	}
}

func (h *Hub) checkToken(got string) bool {
	if h.cfg.Token == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Token)) == 1
}

// task returns the round's task with the given ID, or nil.
func (r *round) task(id int64) *task {
	i := id - r.first
	if i < 0 || i >= int64(len(r.order)) {
		return nil
	}
	return r.order[i]
}
