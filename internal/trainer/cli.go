package trainer

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"fedgather/internal/cli"
)

// Main is the trainer command: it parses args, runs a trainer until the job
// is done or a signal arrives, and returns the exit code.
func Main(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("trainer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	var cfg Config
	fs.StringVar(&cfg.Aggregator, "aggregator", "127.0.0.1:7070", "aggregator address: HOST:PORT or a ws:// or wss:// URL")
	fs.StringVar(&cfg.Name, "name", fmt.Sprintf("%s-%d", host, os.Getpid()), "trainer name shown in the aggregator's round lines")
	fs.StringVar(&cfg.Token, "token", "", "shared secret the aggregator requires, if any")
	fs.Float64Var(&cfg.Slowdown, "slowdown", 1, "make every task take this many times longer (a straggler, for tests and demos)")
	fs.Int64Var(&cfg.MaxMessage, "max-message", 256<<20, "largest message accepted from the aggregator, in bytes")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", 5*time.Second, "longest wait between reconnect attempts")
	fs.DurationVar(&cfg.GiveUp, "give-up", 0, "exit with status 1 once the aggregator has not been reachable for this long, e.g. 10m (default 0: keep trying)")
	fs.DurationVar(&cfg.Report, "report", 10*time.Second, "how often to log progress")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. :9101 (default: off)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: trainer [flags]\n\nConnects to an aggregator, pulls training tasks, returns updates.\nEvery flag may also be set as FEDGATHER_<FLAG> (e.g. FEDGATHER_AGGREGATOR).\n\n")
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "trainer: %v\n", err)
		return 2
	}
	if err := checkFlags(&cfg); err != nil {
		fmt.Fprintf(stderr, "trainer: %v\n", cli.Explain(fs, err))
		return 2
	}
	log, err := cli.Logger(stderr, *level, "trainer", cfg.Name)
	if err != nil {
		fmt.Fprintf(stderr, "trainer: %v\n", err)
		return 2
	}
	cfg.Logger = log
	ln, err := listenMetrics(*metricsAddr)
	if err != nil {
		fmt.Fprintf(stderr, "trainer: %v\n", err)
		return 2
	}
	if ln != nil {
		defer ln.Close()
		cfg.Metrics = NewMetrics(cfg.Name)
	}
	t, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "trainer: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if ln != nil {
		served := make(chan struct{})
		serveCtx, stopServing := context.WithCancel(ctx)
		go func() {
			defer close(served)
			cfg.Metrics.Serve(serveCtx, ln, log)
		}()
		defer func() {
			stopServing()
			select {
			case <-served:
			case <-time.After(2 * time.Second):
			}
		}()
		log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	if err := t.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "trainer: %v\n", err)
		return 1
	}
	return 0
}

// checkFlags refuses the flag values that Config would read as "use the
// default" (zero) or ignore (negative).
func checkFlags(cfg *Config) error {
	switch {
	case !(cfg.Slowdown >= 1 && cfg.Slowdown <= 1000):
		return fmt.Errorf("-slowdown %v: want a factor between 1 and 1000 (1 = full speed)", cfg.Slowdown)
	case cfg.MaxMessage <= 0:
		return fmt.Errorf("-max-message %d: want a positive number of bytes", cfg.MaxMessage)
	case cfg.MaxBackoff <= 0:
		return fmt.Errorf("-max-backoff %v: want a positive duration, such as 5s", cfg.MaxBackoff)
	case cfg.GiveUp < 0:
		return fmt.Errorf("-give-up %v: want a duration ≥ 0, such as 10m (0: keep trying)", cfg.GiveUp)
	case cfg.Report <= 0:
		return fmt.Errorf("-report %v: want a positive duration, such as 10s", cfg.Report)
	}
	return nil
}
