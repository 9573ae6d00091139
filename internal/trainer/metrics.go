package trainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are a trainer process's own counters, exposed to Prometheus with
// the fedgather_worker_ prefix (a trainer process is a worker; the
// aggregator's view of each trainer uses fedgather_trainer_ with a trainer
// label, and the two must not mix in one query). Every method is safe on a
// nil *Metrics, which records nothing, and from any goroutine.
type Metrics struct {
	name string

	mu   sync.Mutex // guards done, so a scrape sees its figures together
	done taskTotals

	connected  atomic.Bool
	reconnects atomic.Int64
	sent       atomic.Int64
	received   atomic.Int64

	reg *prometheus.Registry
}

// NewMetrics returns the metrics of the trainer called name, on a registry
// of their own that also holds the Go runtime and process collectors.
func NewMetrics(name string) *Metrics {
	m := &Metrics{name: name, reg: prometheus.NewRegistry()}
	m.reg.MustRegister(
		workerCollector{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry is the registry holding the trainer's metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the trainer's metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Serve serves /metrics on ln until ctx ends.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics server stopped", "err", err)
	}
}

// taskDone records one trained task.
func (m *Metrics) taskDone(samples int64, compute time.Duration) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.done.add(samples, compute)
	m.mu.Unlock()
}

// setConnected records whether the trainer holds a welcomed connection.
func (m *Metrics) setConnected(c bool) {
	if m != nil {
		m.connected.Store(c)
	}
}

// reconnect records a lost connection about to be retried.
func (m *Metrics) reconnect() {
	if m != nil {
		m.reconnects.Add(1)
	}
}

// addReceived records a frame of n bytes from the aggregator.
func (m *Metrics) addReceived(n int) {
	if m != nil {
		m.received.Add(int64(n))
	}
}

// countSent wraps w so the bytes written through it are counted as sent.
func (m *Metrics) countSent(w io.Writer) io.Writer {
	if m == nil {
		return w
	}
	return sentCounter{w: w, m: m}
}

type sentCounter struct {
	w io.Writer
	m *Metrics
}

func (c sentCounter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.m.sent.Add(int64(n))
	return n, err
}

var (
	workerInfo       = workerDesc("info", "Always 1; its trainer label is the name this trainer reports to the aggregator.", "trainer")
	workerTasks      = workerDesc("tasks_total", "Tasks this trainer trained and answered with an update.")
	workerSamples    = workerDesc("samples_total", "Training examples processed (shard rows times epochs).")
	workerCompute    = workerDesc("compute_seconds_total", "Seconds spent computing updates, sleeps of -slowdown excluded.")
	workerRate       = workerDesc("samples_per_second", "Training throughput over the trainer's life: samples over compute seconds.")
	workerConnected  = workerDesc("connected", "1 while the trainer holds a welcomed connection to the aggregator, else 0.")
	workerReconnects = workerDesc("reconnects_total", "Lost connections the trainer retried.")
	workerSent       = workerDesc("sent_bytes_total", "Bytes of protocol frames sent to the aggregator.")
	workerReceived   = workerDesc("received_bytes_total", "Bytes of protocol frames received from the aggregator.")
)

func workerDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("fedgather_worker_"+name, help, labels, nil)
}

// workerCollector reads the counters at scrape time.
type workerCollector struct{ m *Metrics }

func (c workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{workerInfo, workerTasks, workerSamples, workerCompute, workerRate, workerConnected, workerReconnects, workerSent, workerReceived} {
		ch <- d
	}
}

func (c workerCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	connected := 0.0
	if m.connected.Load() {
		connected = 1
	}
	gauge(workerInfo, 1, m.name)
	counter(workerTasks, float64(done.tasks))
	counter(workerSamples, float64(done.samples))
	counter(workerCompute, done.compute.Seconds())
	gauge(workerRate, done.rate())
	gauge(workerConnected, connected)
	counter(workerReconnects, float64(m.reconnects.Load()))
	counter(workerSent, float64(m.sent.Load()))
	counter(workerReceived, float64(m.received.Load()))
}

// listenMetrics opens the -metrics listener, or returns nil for "".
func listenMetrics(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics %s: %w", addr, err)
	}
	return ln, nil
}
