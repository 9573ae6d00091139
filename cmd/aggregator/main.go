// Command aggregator runs a federated training job: it serves trainers on a
// websocket endpoint, scatters tasks with the current weights, gathers
// their updates into the next model version, and prints one line per
// round and a final summary line:
//
//	done rounds=R accuracy=A loss=L seconds=S
//
// With -demo it also starts trainer processes on this machine (by running
// this same binary as "aggregator trainer ...") and trains the 2NN on MNIST
// until 97% test accuracy.
//
// "aggregator trainer [trainer flags]" runs a trainer, exactly as the
// trainer command does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"fedgather/internal/cli"
	"fedgather/internal/coord"
	"fedgather/internal/job"
	"fedgather/internal/trainer"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "trainer" {
		os.Exit(trainer.Main(os.Args[2:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// loadGCPercent is the GOGC the aggregator runs with while it loads its
// dataset and encodes the shards, unless the user's is lower (or off).
const loadGCPercent = 25

type options struct {
	job      job.Config
	metrics  *metricsOptions
	export   *exportOptions
	listen   string
	token    string
	demo     bool
	trainers int
	level    string
	seed     uint64
}

func flags(stderr io.Writer) (*flag.FlagSet, *options) {
	o := &options{}
	c := &o.job
	fs := flag.NewFlagSet("aggregator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", ":7070", "address to serve trainers, /metrics and /healthz on")
	fs.StringVar(&c.Dataset, "dataset", "datasets/mnist", "MNIST directory (four IDX .gz files) or a table: .csv, .parquet, .arrow")
	fs.StringVar(&c.TestSet, "test-dataset", "", "test table for a table dataset (default: hold out 10% by seed)")
	fs.StringVar(&c.LabelColumn, "label", "label", "label column of a table dataset")
	fs.StringVar(&c.Model, "model", "2nn", "model: logreg, 2nn (784-200-200-10) or mlp:H1,H2,...")
	fs.IntVar(&c.Clients, "clients", 100, "K, logical clients the training set is split into")
	fs.Float64Var(&c.Fraction, "fraction", 0.1, "C, fraction of clients selected per round: m = max(ceil(C*K), 1)")
	fs.StringVar(&c.Mode, "mode", "fedavg", "fedavg (E epochs of B-sized SGD per client) or fedsgd (one full-shard gradient per client)")
	fs.IntVar(&c.Epochs, "epochs", 1, "E, local epochs per task (fedavg)")
	fs.IntVar(&c.Batch, "batch", 10, "B, local minibatch size (fedavg); 0 = the whole shard")
	fs.Float64Var(&c.LR, "lr", 0.1, "client learning rate")
	fs.StringVar(&c.Partition, "partition", "iid", "how clients' data is drawn: iid, pathological (2 label shards per client) or dirichlet:ALPHA")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of partition, client selection, initialisation and local shuffles")
	fs.IntVar(&c.Rounds, "rounds", 100, "rounds to run")
	fs.Float64Var(&c.Target, "target", 0, "stop early once test accuracy reaches this (0 = run all rounds)")
	fs.IntVar(&c.MinTrainers, "min-trainers", 1, "trainers that must be connected before a round starts")
	fs.IntVar(&c.OverSelect, "over-select", 0, "start this many extra tasks per round and close the round at m results")
	fs.StringVar(&c.ServerOpt, "server-opt", "avg", "server optimiser: avg (FedAvg) or avgm (FedAvg with server momentum)")
	fs.Float64Var(&c.ServerLR, "server-lr", 1, "server learning rate applied to the mean update")
	fs.Float64Var(&c.ServerMomentum, "server-momentum", 0.9, "server momentum β for avgm")
	fs.StringVar(&c.Eval, "eval", "trainers", "where each round's model is evaluated on the test set: trainers (scattered as tasks) or local (in the aggregator)")
	fs.IntVar(&c.EvalShards, "eval-shards", 10, "test-set shards, one eval task each, with -eval trainers")
	fs.StringVar(&c.StateDir, "state", "", "directory for a checkpoint after every round; the job resumes from it when restarted")
	fs.StringVar(&o.token, "token", "", "shared secret trainers must present (default: none)")
	fs.DurationVar(&c.Hub.TaskDeadline, "task-deadline", 0, "re-issue a task running longer than this (default: 2x the median time of recent tasks of its kind, training or eval, at least 50ms)")
	fs.Int64Var(&c.Hub.MaxMessage, "max-message", 256<<20, "largest message accepted from a trainer, in bytes")
	fs.DurationVar(&c.Hub.PingPeriod, "ping", 5*time.Second, "ping trainers this often; one silent for 3 pings is dropped")
	fs.BoolVar(&o.demo, "demo", false, "also start trainer processes on this machine; defaults to -listen 127.0.0.1:0 -target 0.97 -rounds 300")
	fs.IntVar(&o.trainers, "trainers", runtime.NumCPU(), "trainer processes to start with -demo")
	fs.StringVar(&o.level, "log-level", "info", "log level: debug, info, warn, error")
	o.metrics = metricsFlags(fs)
	o.export = exportFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: aggregator [flags]\n       aggregator trainer [trainer flags]\n\nRuns a federated training job and serves trainers on -listen.\nEvery flag may also be set as FEDGATHER_<FLAG> (e.g. FEDGATHER_ROUNDS=50).\n\n")
		fs.PrintDefaults()
	}
	return fs, o
}

// checkHubFlags refuses the hub's flag values that the hub would read as
// "use the default" (zero) or ignore (negative).
func checkHubFlags(h *coord.Config) error {
	switch {
	case h.MaxMessage <= 0:
		return fmt.Errorf("-max-message %d: want a positive number of bytes", h.MaxMessage)
	case h.PingPeriod <= 0:
		return fmt.Errorf("-ping %v: want a positive duration, such as 5s", h.PingPeriod)
	case h.TaskDeadline < 0:
		return fmt.Errorf("-task-deadline %v: want a positive duration, or 0 to derive it from recent tasks", h.TaskDeadline)
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	fs, o := flags(stderr)
	// usage reports a bad flag value or input file, naming the
	// environment variables that set the flags it names.
	usage := func(err error) int {
		fmt.Fprintf(stderr, "aggregator: %v\n", cli.Explain(fs, err))
		return 2
	}
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return usage(err)
	}
	if o.demo {
		if !cli.Given(fs, "listen") {
			o.listen = "127.0.0.1:0"
		}
		if !cli.Given(fs, "target") {
			o.job.Target = 0.97
		}
		if !cli.Given(fs, "rounds") {
			o.job.Rounds = 300
		}
		if o.trainers < 1 {
			return usage(fmt.Errorf("-trainers %d: want at least 1", o.trainers))
		}
		if o.job.MinTrainers > o.trainers {
			return usage(fmt.Errorf("-min-trainers %d with -demo -trainers %d: the demo would wait for trainers it never starts", o.job.MinTrainers, o.trainers))
		}
	}
	if err := checkHubFlags(&o.job.Hub); err != nil {
		return usage(err)
	}
	log, err := cli.Logger(stderr, o.level, "component", "aggregator")
	if err != nil {
		return usage(err)
	}
	o.job.Seed = o.seed
	o.job.Hub.Token = o.token
	o.job.Out = stdout
	o.job.Logger = log

	if err := o.export.loadInit(&o.job); err != nil {
		return usage(err)
	}
	// Loading the dataset and encoding its shards make many times the
	// dataset's size in short-lived garbage (copies of each client's rows,
	// and arrow-go's zstd encoders, one per buffer). At the default GOGC the
	// heap ran to twice what is live before each collection: a peak RSS of
	// about 600 MB for MNIST, whose job then needs about 100 MB. Collecting
	// more often while loading keeps the peak near 400 MB, at no start-up
	// time measurable with 100 clients (about 0.7 s more with 1,000).
	prev := debug.SetGCPercent(loadGCPercent)
	if prev < loadGCPercent {
		debug.SetGCPercent(prev) // the user's GOGC is lower still, or off (-1)
	}
	j, err := job.New(o.job)
	debug.SetGCPercent(prev)
	if err != nil {
		return usage(err)
	}
	// The decoded training set is garbage now (about 190 MB for MNIST):
	// hand it back to the system now rather than whenever the runtime gets
	// round to it.
	debug.FreeOSMemory()
	mux := j.Handler()
	if err := setupMetrics(mux, j, o.metrics); err != nil {
		return usage(err)
	}
	if err := setupExport(mux, j, o.export); err != nil {
		return usage(err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return usage(fmt.Errorf("-listen %s: %v", o.listen, err))
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	addr := ln.Addr().String()
	fmt.Fprintf(stdout, "listening on %s (trainers: ws://%s/v1/train)\n", addr, addr)

	// SIGINT or SIGTERM stops the job; the exit code says which (128+N).
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var caught atomic.Int32
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			caught.Store(int32(s.(syscall.Signal)))
			stop()
		case <-ctx.Done():
		}
	}()

	var children sync.WaitGroup
	childCtx, stopChildren := context.WithCancel(ctx)
	defer stopChildren()
	if o.demo {
		if err := startTrainers(childCtx, &children, addr, o, stderr, log); err != nil {
			fmt.Fprintf(stderr, "aggregator: %v\n", err)
			return 1
		}
	}

	sum, runErr := j.Run(ctx)
	if !sum.Done {
		// The job is not over: the demo's trainers would only reconnect.
		stopChildren()
	}
	// Run has told the trainers the job is done, or closed their
	// connections if it is not; let those frames reach them (they then
	// disconnect) before the server goes away.
	gone, cancelGone := context.WithTimeout(context.Background(), 3*time.Second)
	_ = j.Hub().WaitGone(gone)
	cancelGone()
	// Finish has told the trainers; give them a moment to leave cleanly,
	// then stop any that did not.
	if !waitChildren(&children, 5*time.Second) {
		stopChildren()
		waitChildren(&children, 5*time.Second)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = srv.Shutdown(shutdown)
	cancel()
	exportErr := finishExport(j, o.export)
	fmt.Fprintln(stdout, j.Counters())
	fmt.Fprintln(stdout, sum)
	switch {
	case exportErr != nil:
		fmt.Fprintf(stderr, "aggregator: %v\n", exportErr)
		return 1
	case runErr != nil && ctx.Err() != nil:
		sig := syscall.Signal(caught.Load())
		fmt.Fprintf(stderr, "aggregator: stopped by %v before the job was done\n", sig)
		return 128 + int(sig)
	case runErr != nil:
		fmt.Fprintf(stderr, "aggregator: %v\n", runErr)
		return 1
	case o.job.Target > 0 && sum.Accuracy < o.job.Target:
		fmt.Fprintf(stderr, "aggregator: target accuracy %.4f not reached in %d rounds (reached %.4f)\n", o.job.Target, sum.Rounds, sum.Accuracy)
		return 1
	}
	return 0
}

// startTrainers runs -trainers copies of this binary as trainer processes.
func startTrainers(ctx context.Context, wg *sync.WaitGroup, addr string, o *options, stderr io.Writer, log *slog.Logger) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program to start trainers: %w", err)
	}
	for i := 1; i <= o.trainers; i++ {
		args := []string{"trainer", "-aggregator", addr, "-name", fmt.Sprintf("trainer-%d", i), "-log-level", "warn"}
		cmd := exec.Command(exe, args...)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		// One compute thread per trainer: more trainers, not more threads.
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1")
		if o.token != "" {
			// In the environment, not the arguments: process listings show those.
			cmd.Env = append(cmd.Env, cli.EnvName("token")+"="+o.token)
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start trainer %d: %w", i, err)
		}
		log.Info("started trainer", "name", args[4], "pid", cmd.Process.Pid)
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan struct{})
			go func() {
				select {
				case <-ctx.Done():
					_ = cmd.Process.Signal(syscall.SIGTERM)
				case <-done:
				}
			}()
			err := cmd.Wait()
			close(done)
			if err != nil && ctx.Err() == nil {
				log.Warn("trainer process ended", "name", args[4], "err", err)
			}
		}()
	}
	return nil
}

// waitChildren waits up to d for the trainer processes to end and reports
// whether they all did.
func waitChildren(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
