// Package job runs a federated training job on the aggregator: it loads and
// partitions the data, encodes each client's shard once, and runs rounds
// on a coord.Hub — select clients, scatter tasks, gather the weighted mean
// update, apply the server step, evaluate, checkpoint — until the configured
// number of rounds or the target accuracy is reached.
package job

import (
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
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"fedgather/internal/allreduce"
	"fedgather/internal/checkpoint"
	"fedgather/internal/coord"
	"fedgather/internal/data"
	"fedgather/internal/model"
	"fedgather/internal/wire"
)

// Config is a training job.
type Config struct {
	Dataset     string  // a directory holding the four MNIST IDX files, or a table file (.csv, .parquet, .arrow)
	TestSet     string  // for a table dataset: the test table; empty holds out 10% of Dataset by seed
	LabelColumn string  // for a table dataset
	Model       string  // logreg, 2nn, mlp:H1,H2,...
	Clients     int     // K
	Fraction    float64 // C: m = max(⌈C·K⌉, 1) clients per round
	Mode        string  // fedavg or fedsgd
	Epochs      int     // E (fedavg)
	Batch       int     // B (fedavg); 0 = whole shard
	LR          float64 // client learning rate
	Partition   string  // iid, pathological, dirichlet:α
	Seed        uint64
	Rounds      int
	Target      float64 // stop early once test accuracy reaches this; 0 = never
	MinTrainers int
	OverSelect  int // extra tasks started per round; the round closes at m results

	ServerOpt      string // avg or avgm
	ServerLR       float64
	ServerMomentum float64

	// Eval chooses where each new version is evaluated on the test set:
	// "trainers" scatters EvalShards tasks over the trainers like training
	// tasks; "local" evaluates in the aggregator.
	Eval       string
	EvalShards int

	StateDir   string // checkpoint after every round; resume from it at start
	InitParams []float32

	Hub coord.Config // transport and fault-tolerance settings; Model, Params and Shards are filled in

	Out    io.Writer // per-round lines and the summary
	Logger *slog.Logger
}

// Summary is how a job ended.
type Summary struct {
	Rounds   int
	Accuracy float64
	Loss     float64
	Seconds  float64
	Done     bool // the job is over: its rounds run, or its target reached
}

// String is the machine-readable last line: done rounds=R accuracy=A
// loss=L seconds=S, or "stopped" instead of "done" when the job stopped
// before it was over.
func (s Summary) String() string {
	word := "done"
	if !s.Done {
		word = "stopped"
	}
	return fmt.Sprintf("%s rounds=%d accuracy=%.4f loss=%.4f seconds=%.1f", word, s.Rounds, s.Accuracy, s.Loss, s.Seconds)
}

// Report is one round's outcome, for observers such as metrics.
type Report struct {
	Round, Rounds int
	Version       int
	Accuracy      float64
	TestLoss      float64
	AggSeconds    float64            // server step and bookkeeping after the gather
	UpdateNorm    float64            // L2 norm of the applied mean update
	Result        *coord.RoundResult // the round's gather; Mean is nil, already applied to the model
	ETA           time.Duration
}

// Job is a configured, ready-to-run training job.
type Job struct {
	cfg    Config
	spec   model.Spec
	test   *data.Dataset
	shards []coord.Shard
	hub    *coord.Hub
	opt    allreduce.ServerOptimizer
	ws     *model.Workspace
	jobKey map[string]string

	// params and version are the newest weights; Run is their only
	// reader and writer.
	params  []float32
	version int
	mean    []float32 // each round's mean update, applied to params at once

	// evaluated is the newest version whose test-set figures are known
	// (params, once its evaluation is in), with those figures: what the
	// checkpoint, the exports, /v1/model and /healthz show. mu guards them.
	mu               sync.RWMutex
	evaluated        []float32
	evaluatedVersion int
	accuracy         float64
	loss             float64

	next      int     // next round to run
	elapsed   float64 // seconds trained before this process (from a checkpoint)
	observers []func(Report)
}

// New loads the data, partitions it and prepares the hub. With a StateDir
// that holds a checkpoint, the job resumes from it.
func New(cfg Config) (*Job, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	train, test, err := loadData(&cfg)
	if err != nil {
		return nil, err
	}
	spec, err := model.Parse(cfg.Model, train.Dim, train.Classes)
	if err != nil {
		return nil, err
	}
	if m, need := cfg.Hub.MaxMessage, wire.TensorFrameMax(spec.NumParams()); m > 0 && m < need {
		return nil, fmt.Errorf("-max-message %d: model %s's updates take up to %d bytes (%d parameters × 4, plus a header of at most %d); want at least that", m, spec, need, spec.NumParams(), wire.MaxHeader)
	}
	part, err := data.ParsePartition(cfg.Partition)
	if err != nil {
		return nil, err
	}
	if cfg.Clients > train.Len() {
		return nil, fmt.Errorf("-clients %d exceeds the %d training examples", cfg.Clients, train.Len())
	}
	split, err := part.Split(train.Y, train.Classes, cfg.Clients, cfg.Seed)
	if err != nil {
		return nil, fmt.Errorf("partition %s: %w", cfg.Partition, err)
	}
	shards, err := encodeShards(train, split)
	if err != nil {
		return nil, err
	}
	var evalShards []coord.Shard
	if cfg.Eval == "trainers" {
		if evalShards, err = encodeShards(test, evenSplit(test.Len(), cfg.EvalShards)); err != nil {
			return nil, err
		}
	}
	opt, err := allreduce.NewServerOptimizer(cfg.ServerOpt, cfg.ServerLR, cfg.ServerMomentum, spec.NumParams())
	if err != nil {
		return nil, err
	}
	hc := cfg.Hub
	hc.Model = wire.ModelSpec{Name: spec.Name, Sizes: spec.Sizes}
	hc.Params = spec.NumParams()
	hc.Shards = shards
	hc.EvalShards = evalShards
	hc.Logger = cfg.Logger
	hub, err := coord.New(hc)
	if err != nil {
		return nil, err
	}
	j := &Job{
		cfg: cfg, spec: spec, test: test, shards: shards, hub: hub, opt: opt,
		ws:     model.NewWorkspace(spec, 1000),
		params: make([]float32, spec.NumParams()),
		mean:   make([]float32, spec.NumParams()),
		jobKey: cfg.key(spec),
	}
	switch {
	case cfg.InitParams != nil:
		if len(cfg.InitParams) != len(j.params) {
			return nil, fmt.Errorf("initial model has %d parameters, %s has %d", len(cfg.InitParams), spec, len(j.params))
		}
		copy(j.params, cfg.InitParams)
	default:
		spec.Init(j.params, cfg.Seed)
	}
	if cfg.StateDir != "" {
		if err := j.resume(); err != nil {
			return nil, err
		}
	}
	j.accuracy, j.loss = j.ws.Evaluate(j.params, j.test)
	j.evaluated, j.evaluatedVersion = slices.Clone(j.params), j.version
	return j, nil
}

// evaluation reads the test-set figures of a round that evaluated the
// current version: scattered over the trainers, or here when some test
// shards could not be evaluated (dropped after repeated failures), rather
// than report a partial figure.
func (j *Job) evaluation(res *coord.RoundResult) (accuracy, loss float64) {
	if res.EvalSamples != int64(j.test.Len()) {
		j.cfg.Logger.Warn("evaluating on the aggregator: trainers evaluated only part of the test set", "examples", res.EvalSamples, "of", j.test.Len())
		return j.ws.Evaluate(j.params, j.test)
	}
	return float64(res.Correct) / float64(res.EvalSamples), res.EvalLoss
}

// evenSplit cuts n rows into k contiguous, near-equal parts.
func evenSplit(n, k int) [][]int {
	k = max(min(k, n), 1)
	parts := make([][]int, k)
	for p := range parts {
		lo, hi := p*n/k, (p+1)*n/k
		for i := lo; i < hi; i++ {
			parts[p] = append(parts[p], i)
		}
	}
	return parts
}

// maxEncoders bounds how many shards are encoded at once, each worker
// holding a data.ShardEncoder (about 17 MB) until the shards are done. (When
// arrow-go's writer compressed the shards, each encoding made about 20 MB of
// garbage and the peak of start-up memory grew with the workers: on MNIST
// with 100 clients, about 400 MB with 2 workers, 470 MB with 4, 600 MB with
// 8 and 1 GB with 32.)
const maxEncoders = 4

// encodeShards encodes every client's shard once, as it will travel, on up
// to maxEncoders cores: ZSTD compression is the slow part of start-up.
func encodeShards(train *data.Dataset, split [][]int) ([]coord.Shard, error) {
	shards := make([]coord.Shard, len(split))
	errs := make([]error, len(split))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), maxEncoders); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc := data.NewShardEncoder() // garbage once the shards are encoded
			for k := range next {
				b, err := enc.Encode(train.Subset(split[k]))
				if err != nil {
					errs[k] = fmt.Errorf("encode client %d's shard: %w", k, err)
					continue
				}
				sum := sha256.Sum256(b)
				shards[k] = coord.Shard{Hash: hex.EncodeToString(sum[:]), Rows: len(split[k]), Bytes: b}
			}
		}()
	}
	for k := range split {
		next <- k
	}
	close(next)
	wg.Wait()
	return shards, errors.Join(errs...)
}

func (c *Config) check() error {
	var errs []string
	if c.Clients < 1 {
		errs = append(errs, fmt.Sprintf("-clients %d: want at least 1", c.Clients))
	}
	if !(c.Fraction > 0 && c.Fraction <= 1) {
		errs = append(errs, fmt.Sprintf("-fraction %v: want 0 < C ≤ 1", c.Fraction))
	}
	switch c.Mode {
	case "fedavg":
		if c.Epochs < 1 {
			errs = append(errs, fmt.Sprintf("-epochs %d: want at least 1", c.Epochs))
		}
		if c.Batch < 0 {
			errs = append(errs, fmt.Sprintf("-batch %d: want ≥ 0 (0 = whole shard)", c.Batch))
		}
	case "fedsgd":
	default:
		errs = append(errs, fmt.Sprintf("-mode %q: want fedavg or fedsgd", c.Mode))
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		errs = append(errs, fmt.Sprintf("-lr %v: want a positive number", c.LR))
	}
	if c.Rounds < 1 {
		errs = append(errs, fmt.Sprintf("-rounds %d: want at least 1", c.Rounds))
	}
	if !(c.Target >= 0 && c.Target <= 1) {
		errs = append(errs, fmt.Sprintf("-target %v: want an accuracy in [0, 1] (0 = run all rounds)", c.Target))
	}
	if c.MinTrainers < 1 {
		errs = append(errs, fmt.Sprintf("-min-trainers %d: want at least 1", c.MinTrainers))
	}
	switch c.Eval {
	case "trainers":
		if c.EvalShards < 1 {
			errs = append(errs, fmt.Sprintf("-eval-shards %d: want at least 1", c.EvalShards))
		}
	case "local":
	default:
		errs = append(errs, fmt.Sprintf("-eval %q: want trainers or local", c.Eval))
	}
	if c.OverSelect < 0 {
		errs = append(errs, fmt.Sprintf("-over-select %d: want ≥ 0", c.OverSelect))
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// PerRound is m, the number of clients whose updates close a round.
func (c *Config) PerRound() int {
	return max(int(math.Ceil(c.Fraction*float64(c.Clients)-1e-9)), 1)
}

// key lists the settings a checkpoint must agree with to be resumed.
func (c *Config) key(spec model.Spec) map[string]string {
	mode := c.Mode
	if mode == "fedavg" {
		mode = fmt.Sprintf("fedavg E=%d B=%d", c.Epochs, c.Batch)
	}
	return map[string]string{
		"dataset":   filepath.Base(c.Dataset),
		"model":     spec.String(),
		"clients":   strconv.Itoa(c.Clients),
		"fraction":  strconv.FormatFloat(c.Fraction, 'g', -1, 64),
		"mode":      mode,
		"lr":        strconv.FormatFloat(c.LR, 'g', -1, 64),
		"partition": c.Partition,
		"seed":      strconv.FormatUint(c.Seed, 10),
		"server":    fmt.Sprintf("%s lr=%g momentum=%g", c.ServerOpt, c.ServerLR, c.ServerMomentum),
	}
}

func loadData(c *Config) (train, test *data.Dataset, err error) {
	st, err := os.Stat(c.Dataset)
	if err != nil {
		return nil, nil, fmt.Errorf("dataset: %w", err)
	}
	if st.IsDir() {
		train, test, err = data.LoadMNIST(c.Dataset)
		if err != nil {
			return nil, nil, err
		}
		return train, test, nil
	}
	all, err := data.LoadTable(c.Dataset, c.LabelColumn)
	if err != nil {
		return nil, nil, err
	}
	if c.TestSet != "" {
		test, err := data.LoadTable(c.TestSet, c.LabelColumn)
		if err != nil {
			return nil, nil, err
		}
		if test.Dim != all.Dim {
			return nil, nil, fmt.Errorf("test set %s has %d features, training set %d", c.TestSet, test.Dim, all.Dim)
		}
		test.Classes = max(test.Classes, all.Classes)
		all.Classes = test.Classes
		return all, test, nil
	}
	if all.Len() < 10 {
		return nil, nil, fmt.Errorf("dataset %s has %d rows; need at least 10 to hold out a test set", c.Dataset, all.Len())
	}
	perm := rand.New(rand.NewPCG(c.Seed, 0x7e57)).Perm(all.Len())
	cut := all.Len() / 10
	return all.Subset(perm[cut:]), all.Subset(perm[:cut]), nil
}

func (j *Job) resume() error {
	s, err := checkpoint.Load(j.cfg.StateDir)
	if errors.Is(err, checkpoint.ErrNone) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := checkpoint.Mismatch(s.Job, j.jobKey); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(j.cfg.StateDir, checkpoint.FileName), err)
	}
	if len(s.Params) != len(j.params) {
		return fmt.Errorf("checkpoint holds %d parameters, %s has %d", len(s.Params), j.spec, len(j.params))
	}
	if err := j.opt.SetState(s.Optimizer); err != nil {
		return fmt.Errorf("checkpoint optimiser state: %w", err)
	}
	copy(j.params, s.Params)
	j.version, j.next, j.elapsed = s.Version, s.NextRound, s.Seconds
	j.cfg.Logger.Info("resumed from checkpoint", "round", s.NextRound+1, "version", s.Version, "accuracy", s.Accuracy)
	fmt.Fprintf(j.cfg.Out, "resumed at round %d from %s (accuracy %.4f)\n", s.NextRound+1, j.cfg.StateDir, s.Accuracy)
	return nil
}

// Hub is the job's trainer hub.
func (j *Job) Hub() *coord.Hub { return j.hub }

// Spec is the job's model architecture.
func (j *Job) Spec() model.Spec { return j.spec }

// Observe registers f to be called after every round.
func (j *Job) Observe(f func(Report)) { j.observers = append(j.observers, f) }

// Model returns a copy of the current global weights with their version and
// test accuracy.
func (j *Job) Model() (params []float32, version int, accuracy float64) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return slices.Clone(j.evaluated), j.evaluatedVersion, j.accuracy
}

// Handler serves the trainers' websocket endpoint and /healthz.
func (j *Job) Handler() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/v1/train", j.hub)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, version, acc := j.Model()
		fmt.Fprintf(w, "ok version=%d accuracy=%.4f trainers=%d\n", version, acc, j.hub.Trainers())
	})
	return mux
}

// trained is a round whose server step is done and whose new version
// awaits its test-set evaluation.
type trained struct {
	round int // 0-based
	res   *coord.RoundResult
	agg   float64 // seconds of the server step (and of a local evaluation)
	norm  float64 // L2 norm of the applied mean update
}

// Run runs the remaining rounds and returns the summary. When the job is
// over (its rounds run, or its target reached) trainers are told it is
// done and exit; when Run ends otherwise (ctx ended, or an error) their
// connections are closed as "going away", and they keep reconnecting, so
// that an aggregator restarted on the same -state carries on with them.
//
// With evaluation on the trainers, each version is evaluated in the same
// round as the next version is trained from it: round r+1's training tasks
// and the eval tasks of the version round r produced share one queue and
// one gather. Round r's line is printed, and its checkpoint written, once
// that gather is in and before the next server step; if round r reached
// the target accuracy, round r+1's training is discarded unapplied. The
// versions, and so every figure, are those of evaluating before training.
func (j *Job) Run(ctx context.Context) (sum Summary, err error) {
	cfg := &j.cfg
	defer func() {
		if sum.Done {
			j.hub.Finish("job complete")
		} else {
			j.hub.GoAway("aggregator stopping before the job is done")
		}
	}()
	start := time.Now()
	m := cfg.PerRound()
	if j.next == 0 {
		fmt.Fprintf(cfg.Out, "job: %s, %d clients (%s), %d per round, %s, lr %g, %d rounds; round 0 accuracy %.4f\n",
			j.spec, cfg.Clients, cfg.Partition, m, j.cfg.key(j.spec)["mode"], cfg.LR, cfg.Rounds, j.accuracy)
	}
	var roundSecs []float64
	var held *trained // awaiting evaluation in this gather
	for r := j.next; ; r++ {
		if held == nil && (r >= cfg.Rounds || (cfg.Target > 0 && j.accuracy >= cfg.Target)) {
			break
		}
		if j.hub.Trainers() < cfg.MinTrainers {
			fmt.Fprintf(cfg.Out, "waiting for trainers: %d of %d connected\n", j.hub.Trainers(), cfg.MinTrainers)
			if err := j.hub.WaitTrainers(ctx, cfg.MinTrainers); err != nil {
				return j.summary(j.next, start), err
			}
		}
		train := r < cfg.Rounds
		// Run is the only writer of params and version, so it reads them
		// without the lock; RunRound takes its own copy of the weights.
		// Past the last round the gather only evaluates: no clients.
		spec := coord.RoundSpec{
			Round: r, Version: j.version, Model: j.params, Mean: j.mean, Evaluate: held != nil, Quorum: m,
			Mode: cfg.Mode, Epochs: cfg.Epochs, Batch: cfg.Batch, LR: float32(cfg.LR), Seed: cfg.Seed,
		}
		if train {
			spec.Clients = SelectClients(cfg.Seed, r, cfg.Clients, m+cfg.OverSelect)
		}
		if cfg.Mode == "fedsgd" {
			spec.Epochs, spec.Batch = 1, 0
		}
		res, err := j.hub.RunRound(ctx, spec)
		if err != nil {
			return j.summary(j.next, start), err
		}
		if held != nil {
			acc, loss := j.evaluation(res)
			if err := j.record(held, acc, loss, &roundSecs, start); err != nil {
				return j.summary(j.next, start), err
			}
			held = nil
			if cfg.Target > 0 && acc >= cfg.Target {
				break // round r's training is not needed
			}
		}
		if !train {
			break
		}
		held = j.step(r, res)
		if cfg.Eval == "local" {
			t := time.Now()
			acc, loss := j.ws.Evaluate(j.params, j.test)
			held.agg += time.Since(t).Seconds()
			if err := j.record(held, acc, loss, &roundSecs, start); err != nil {
				return j.summary(j.next, start), err
			}
			held = nil
		}
	}
	sum = j.summary(j.next, start)
	sum.Done = true
	return sum, nil
}

// step applies round r's mean update to the model: the next version.
func (j *Job) step(r int, res *coord.RoundResult) *trained {
	t := &trained{round: r, res: res}
	begin := time.Now()
	if res.Updates == 0 {
		fmt.Fprintf(j.cfg.Out, "round %d gathered no update; the model is unchanged\n", r+1)
		return t
	}
	var norm float64
	for _, x := range res.Mean {
		norm += float64(x) * float64(x)
	}
	t.norm = math.Sqrt(norm)
	j.opt.Step(j.params, res.Mean)
	res.Mean = nil // j.mean, which the next round overwrites; observers get no stale mean
	j.version++
	t.agg = time.Since(begin).Seconds()
	return t
}

// record records a trained round's evaluation: the model's figures, the
// checkpoint, the round line and the observers.
func (j *Job) record(t *trained, acc, loss float64, roundSecs *[]float64, start time.Time) error {
	cfg := &j.cfg
	r, res := t.round, t.res
	j.mu.Lock()
	copy(j.evaluated, j.params)
	j.evaluatedVersion, j.accuracy, j.loss = j.version, acc, loss
	j.mu.Unlock()
	*roundSecs = append(*roundSecs, res.Seconds+t.agg)
	eta := estimate(*roundSecs, cfg.Rounds-r-1)
	j.next = r + 1
	// Save before printing: a round that was printed is never run again.
	if cfg.StateDir != "" {
		if err := j.save(start); err != nil {
			return err
		}
	}
	fmt.Fprintf(cfg.Out, "round %d/%d acc=%.4f test_loss=%.4f train_loss=%.4f secs=%.2f updates=%d tasks=%s%s speed=%s eta=%s\n",
		r+1, cfg.Rounds, acc, loss, res.TrainLoss, res.Seconds+t.agg, res.Updates, formatTasks(res.Tasks), faults(res), formatRates(res.Rates), eta)
	for _, f := range j.observers {
		f(Report{Round: r + 1, Rounds: cfg.Rounds, Version: j.version, Accuracy: acc, TestLoss: loss, AggSeconds: t.agg, UpdateNorm: t.norm, Result: res, ETA: eta})
	}
	return nil
}

// Counters is the hub's task accounting as one line, printed before the
// summary: every selected client's update is completed exactly once, and
// what was retried or discarded on the way is counted.
func (j *Job) Counters() string {
	s := j.hub.Snapshot()
	return fmt.Sprintf("tasks assigned=%d completed=%d failed=%d requeued=%d reissued=%d dropped=%d duplicates=%d stale=%d rejected=%d trainers_joined=%d models_sent=%d shards_sent=%d bytes_sent=%d bytes_received=%d",
		s.TasksAssigned, s.TasksCompleted, s.TasksFailed, s.TasksRequeued, s.TasksReissued, s.TasksDropped,
		s.UpdatesDuplicate, s.UpdatesStale, s.UpdatesRejected, s.TrainersJoined, s.ModelsSent, s.ShardsSent, s.BytesSent, s.BytesReceived)
}

func (j *Job) summary(rounds int, start time.Time) Summary {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return Summary{Rounds: rounds, Accuracy: j.accuracy, Loss: j.loss, Seconds: j.elapsed + time.Since(start).Seconds()}
}

func (j *Job) save(start time.Time) error {
	params, version, acc := j.Model()
	return checkpoint.Save(j.cfg.StateDir, &checkpoint.State{
		NextRound: j.next, Version: version, Job: j.jobKey, Accuracy: acc, Loss: j.loss,
		Seconds: j.elapsed + time.Since(start).Seconds(), Params: params, Optimizer: j.opt.State(),
	})
}

// SelectClients picks n distinct clients of k for a round, by seed: the
// same seed and round always give the same clients in the same order.
func SelectClients(seed uint64, round, k, n int) []int {
	n = min(n, k)
	r := rand.New(rand.NewPCG(seed, 0x5e1ec7^uint64(round)))
	return r.Perm(k)[:n]
}

// estimate is the time left for `left` more rounds at the median pace.
func estimate(secs []float64, left int) time.Duration {
	if len(secs) == 0 || left <= 0 {
		return 0
	}
	s := append([]float64(nil), secs...)
	sort.Float64s(s)
	return time.Duration(s[len(s)/2] * float64(left) * float64(time.Second)).Round(time.Second)
}

func formatTasks(t map[string]int) string {
	return byName(t, func(b []byte, n int) []byte { return strconv.AppendInt(b, int64(n), 10) })
}

// formatRates lists each trainer's samples per second in the round, in
// thousands: trainer-1:16.2k,trainer-2:15.9k.
func formatRates(rates map[string]float64) string {
	return byName(rates, func(b []byte, r float64) []byte { return append(strconv.AppendFloat(b, r/1000, 'f', 1, 64), 'k') })
}

// byName lists m as name:value pairs, names sorted, joined by commas; "-"
// when m is empty. value appends a value's text to its first argument. The
// line lists every trainer of the round, so it is built in one buffer.
func byName[V any](m map[string]V, value func([]byte, V) []byte) string {
	if len(m) == 0 {
		return "-"
	}
	names := make([]string, 0, len(m))
	size := 0
	for n := range m {
		names = append(names, n)
		size += len(n) + 8
	}
	slices.Sort(names)
	var b strings.Builder
	b.Grow(size)
	var v [32]byte
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteByte(':')
		b.Write(value(v[:0], m[n]))
	}
	return b.String()
}

func faults(r *coord.RoundResult) string {
	var b strings.Builder
	for _, f := range []struct {
		name string
		n    int
	}{{"requeued", r.Requeued}, {"reissued", r.Reissued}, {"duplicates", r.Duplicates}, {"failed", r.Failed}, {"dropped", len(r.Dropped)}} {
		if f.n > 0 {
			fmt.Fprintf(&b, " %s=%d", f.name, f.n)
		}
	}
	return b.String()
}
