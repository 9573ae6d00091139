// Package metrics exposes the aggregator's state to Prometheus.
//
// Everything lives on one prometheus.Registry owned by an Aggregator value;
// nothing is registered globally. Two feeds fill it:
//
//   - Observe, registered with job.Job.Observe, is called after every round
//     and sets the model gauges (round, version, accuracy, losses, update
//     norm) and observes the round and aggregation time histograms.
//   - A custom collector reads the hub's counters (coord.Stats) at scrape
//     time, so the task, update, trainer and byte counters of one scrape all
//     come from one consistent snapshot and are never double-booked.
//
// Names follow the Prometheus conventions: the fedgather_ prefix, base units
// (_seconds, _bytes), counters ending in _total. The only labels are
// reason (three values), and trainer, whose values are the trainer names
// chosen by the operators; their number is capped by MaxTrainerSeries.
package metrics

import (
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"fedgather/internal/coord"
	"fedgather/internal/job"
)

// Namespace prefixes every fedgather metric name.
const Namespace = "fedgather"

// MaxTrainerSeries is how many trainer names get their own series in the
// per-trainer metrics. Trainer names are set by the operators (-name) and
// are few; should more appear (for instance default HOST-PID names over many
// restarts), the names after the first MaxTrainerSeries in sorted order are
// summed into the series trainer="_other", so the label stays bounded.
const MaxTrainerSeries = 64

// OtherTrainers is the trainer label value that collects the trainers past
// MaxTrainerSeries.
const OtherTrainers = "_other"

// Source is what the scrape-time collector reads: the hub's cumulative
// counters. *coord.Hub implements it.
type Source interface {
	Snapshot() coord.Stats
}

// Aggregator is the aggregator's metrics registry and the instruments the
// job's rounds update.
type Aggregator struct {
	reg *prometheus.Registry

	round         prometheus.Gauge
	roundsPlanned prometheus.Gauge
	version       prometheus.Gauge
	accuracy      prometheus.Gauge
	testLoss      prometheus.Gauge
	trainLoss     prometheus.Gauge
	updateNorm    prometheus.Gauge
	roundUpdates  prometheus.Gauge
	eta           prometheus.Gauge
	roundSeconds  prometheus.Histogram
	aggSeconds    prometheus.Histogram
}

// RoundBuckets are the upper bounds of the round duration histogram, in
// seconds: 50 ms to about 7 minutes.
var RoundBuckets = prometheus.ExponentialBuckets(0.05, 2, 14)

// AggregationBuckets are the upper bounds of the aggregation time
// histogram, in seconds: 1 ms to about 16 s.
var AggregationBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// New returns an Aggregator whose registry holds the round metrics, a
// collector reading src at every scrape, and the Go runtime and process
// collectors.
func New(src Source) *Aggregator {
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	}
	a := &Aggregator{
		reg:           prometheus.NewRegistry(),
		round:         gauge("round", "Rounds completed so far (the last completed round's 1-based number)."),
		roundsPlanned: gauge("rounds_planned", "Rounds the job is configured to run (-rounds)."),
		version:       gauge("model_version", "Version of the global model: server steps applied."),
		accuracy:      gauge("test_accuracy_ratio", "Test-set accuracy of the global model, 0 to 1."),
		testLoss:      gauge("test_loss", "Mean cross-entropy loss of the global model on the test set."),
		trainLoss:     gauge("train_loss", "Sample-weighted mean training loss the last round's updates reported."),
		updateNorm:    gauge("update_norm", "L2 norm of the last round's weighted mean update (before the server step)."),
		roundUpdates:  gauge("round_updates", "Updates folded into the last round's mean."),
		eta:           gauge("eta_seconds", "Estimated time left for the remaining rounds, at the median round time."),
		roundSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "round_duration_seconds",
			Help:    "Wall time of a round: scatter, gather and the aggregation after it.",
			Buckets: RoundBuckets,
		}),
		aggSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "aggregation_duration_seconds",
			Help:    "Time after a round's gather: the server step and bookkeeping (with -eval local, the evaluation too).",
			Buckets: AggregationBuckets,
		}),
	}
	a.reg.MustRegister(
		a.round, a.roundsPlanned, a.version, a.accuracy, a.testLoss, a.trainLoss,
		a.updateNorm, a.roundUpdates, a.eta, a.roundSeconds, a.aggSeconds,
		newHubCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return a
}

// Registry is the registry holding every metric of the aggregator.
func (a *Aggregator) Registry() *prometheus.Registry { return a.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (a *Aggregator) Handler() http.Handler {
	return promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg})
}

// SetState sets the gauges describing the job's progress and model from r
// without observing a round: use it with job.Job.State before the first
// round, so a resumed job shows its real round and accuracy at once.
func (a *Aggregator) SetState(r job.Report) {
	a.round.Set(float64(r.Round))
	a.roundsPlanned.Set(float64(r.Rounds))
	a.version.Set(float64(r.Version))
	a.accuracy.Set(r.Accuracy)
	a.testLoss.Set(r.TestLoss)
}

// Observe records one round. Register it with job.Job.Observe; it is safe
// to call from any goroutine.
func (a *Aggregator) Observe(r job.Report) {
	a.SetState(r)
	a.updateNorm.Set(r.UpdateNorm)
	a.eta.Set(r.ETA.Seconds())
	a.aggSeconds.Observe(r.AggSeconds)
	if res := r.Result; res != nil {
		a.roundSeconds.Observe(res.Seconds + r.AggSeconds)
		a.roundUpdates.Set(float64(res.Updates))
		if res.Updates > 0 {
			a.trainLoss.Set(res.TrainLoss)
		}
	}
}

// hubCollector turns a coord.Stats snapshot into metrics at scrape time.
type hubCollector struct {
	src Source

	trainersConnected *prometheus.Desc
	trainersJoined    *prometheus.Desc
	trainersLeft      *prometheus.Desc
	tasks             []taskCounter
	discarded         *prometheus.Desc
	modelsSent        *prometheus.Desc
	shardsSent        *prometheus.Desc
	bytesSent         *prometheus.Desc
	bytesReceived     *prometheus.Desc
	trainerTasks      *prometheus.Desc
	trainerSamples    *prometheus.Desc
	trainerSeconds    *prometheus.Desc
	trainerRate       *prometheus.Desc
}

type taskCounter struct {
	desc  *prometheus.Desc
	value func(*coord.Stats) int64
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

func newHubCollector(src Source) *hubCollector {
	task := func(name, help string, v func(*coord.Stats) int64) taskCounter {
		return taskCounter{desc: desc("tasks_"+name+"_total", help), value: v}
	}
	return &hubCollector{
		src:               src,
		trainersConnected: desc("trainers_connected", "Trainer connections open now."),
		trainersJoined:    desc("trainers_joined_total", "Trainer connections accepted, reconnects included."),
		trainersLeft:      desc("trainers_left_total", "Trainer connections closed, for any reason."),
		tasks: []taskCounter{
			task("assigned", "Task attempts handed to trainers, re-issued copies included.", func(s *coord.Stats) int64 { return s.TasksAssigned }),
			task("completed", "Tasks whose update was folded into their round: exactly once per task.", func(s *coord.Stats) int64 { return s.TasksCompleted }),
			task("failed", "Task attempts whose update was rejected or that the trainer gave up.", func(s *coord.Stats) int64 { return s.TasksFailed }),
			task("requeued", "Tasks put back on the queue after their trainer left or failed.", func(s *coord.Stats) int64 { return s.TasksRequeued }),
			task("reissued", "Extra copies of tasks that ran past their deadline.", func(s *coord.Stats) int64 { return s.TasksReissued }),
			task("dropped", "Tasks given up after too many failures.", func(s *coord.Stats) int64 { return s.TasksDropped }),
		},
		discarded:      desc("updates_discarded_total", "Updates not folded, by reason: duplicate (task already counted), stale (round already closed), rejected (failed validation).", "reason"),
		modelsSent:     desc("models_sent_total", "Model weight frames sent to trainers."),
		shardsSent:     desc("shards_sent_total", "Client shard frames sent to trainers."),
		bytesSent:      desc("network_sent_bytes_total", "Bytes of protocol frames sent to trainers."),
		bytesReceived:  desc("network_received_bytes_total", "Bytes of protocol frames received from trainers."),
		trainerTasks:   desc("trainer_tasks_total", "Tasks whose update was counted, by trainer name.", "trainer"),
		trainerSamples: desc("trainer_samples_total", "Training examples processed in counted tasks (n_k times epochs), by trainer name.", "trainer"),
		trainerSeconds: desc("trainer_compute_seconds_total", "Compute seconds trainers reported for counted tasks, by trainer name.", "trainer"),
		trainerRate:    desc("trainer_samples_per_second", "Training throughput each trainer has shown: samples over compute seconds, over its whole life.", "trainer"),
	}
}

// Describe sends every descriptor the collector uses.
func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.trainersConnected, c.trainersJoined, c.trainersLeft, c.discarded, c.modelsSent, c.shardsSent,
		c.bytesSent, c.bytesReceived, c.trainerTasks, c.trainerSamples, c.trainerSeconds, c.trainerRate,
	} {
		ch <- d
	}
	for _, t := range c.tasks {
		ch <- t.desc
	}
}

// Collect takes one snapshot of the hub and sends every metric from it.
func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.trainersConnected, prometheus.GaugeValue, float64(s.TrainersConnected))
	counter(c.trainersJoined, float64(s.TrainersJoined))
	counter(c.trainersLeft, float64(s.TrainersLeft))
	for _, t := range c.tasks {
		counter(t.desc, float64(t.value(&s)))
	}
	counter(c.discarded, float64(s.UpdatesDuplicate), "duplicate")
	counter(c.discarded, float64(s.UpdatesStale), "stale")
	counter(c.discarded, float64(s.UpdatesRejected), "rejected")
	counter(c.modelsSent, float64(s.ModelsSent))
	counter(c.shardsSent, float64(s.ShardsSent))
	counter(c.bytesSent, float64(s.BytesSent))
	counter(c.bytesReceived, float64(s.BytesReceived))
	for name, t := range boundTrainers(s.Trainers, MaxTrainerSeries) {
		counter(c.trainerTasks, float64(t.Tasks), name)
		counter(c.trainerSamples, float64(t.Samples), name)
		counter(c.trainerSeconds, t.Seconds, name)
		ch <- prometheus.MustNewConstMetric(c.trainerRate, prometheus.GaugeValue, t.SamplesPerSecond(), name)
	}
}

// boundTrainers keeps the first n trainer names in sorted order and sums
// the others into OtherTrainers. Names only ever join the hub's map, so a
// name can move into OtherTrainers but never out of it, and the summed
// counters stay monotonic.
func boundTrainers(ts map[string]coord.TrainerStats, n int) map[string]coord.TrainerStats {
	if len(ts) <= n {
		return ts
	}
	names := make([]string, 0, len(ts))
	for name := range ts {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make(map[string]coord.TrainerStats, n+1)
	var other coord.TrainerStats
	for i, name := range names {
		t := ts[name]
		if i < n && name != OtherTrainers {
			out[name] = t
			continue
		}
		other.Tasks += t.Tasks
		other.Samples += t.Samples
		other.Seconds += t.Seconds
	}
	out[OtherTrainers] = other
	return out
}
