package metrics

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"fedgather/internal/coord"
	"fedgather/internal/job"
)

// fakeHub is a Source whose stats the test sets; it counts snapshots.
type fakeHub struct {
	mu    sync.Mutex
	stats coord.Stats
	calls atomic.Int64
}

func (f *fakeHub) Snapshot() coord.Stats {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Trainers = make(map[string]coord.TrainerStats, len(f.stats.Trainers))
	for k, v := range f.stats.Trainers {
		s.Trainers[k] = v
	}
	return s
}

func sampleStats() coord.Stats {
	return coord.Stats{
		TrainersConnected: 3, TrainersJoined: 4, TrainersLeft: 1,
		TasksAssigned: 25, TasksCompleted: 20, TasksFailed: 2, TasksRequeued: 3, TasksReissued: 1, TasksDropped: 0,
		UpdatesDuplicate: 1, UpdatesStale: 2, UpdatesRejected: 2,
		ModelsSent: 6, ShardsSent: 20, BytesSent: 123456, BytesReceived: 65432,
		Trainers: map[string]coord.TrainerStats{
			"t1": {Tasks: 12, Samples: 7200, Seconds: 2},
			"t2": {Tasks: 8, Samples: 4800, Seconds: 4},
		},
	}
}

func TestHubCounters(t *testing.T) {
	a := New(&fakeHub{stats: sampleStats()})
	got := gather(t, a.Registry())
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fedgather_trainers_connected", nil, 3},
		{"fedgather_trainers_joined_total", nil, 4},
		{"fedgather_trainers_left_total", nil, 1},
		{"fedgather_tasks_assigned_total", nil, 25},
		{"fedgather_tasks_completed_total", nil, 20},
		{"fedgather_tasks_failed_total", nil, 2},
		{"fedgather_tasks_requeued_total", nil, 3},
		{"fedgather_tasks_reissued_total", nil, 1},
		{"fedgather_tasks_dropped_total", nil, 0},
		{"fedgather_updates_discarded_total", []string{"reason", "duplicate"}, 1},
		{"fedgather_updates_discarded_total", []string{"reason", "stale"}, 2},
		{"fedgather_updates_discarded_total", []string{"reason", "rejected"}, 2},
		{"fedgather_models_sent_total", nil, 6},
		{"fedgather_shards_sent_total", nil, 20},
		{"fedgather_network_sent_bytes_total", nil, 123456},
		{"fedgather_network_received_bytes_total", nil, 65432},
		{"fedgather_trainer_tasks_total", []string{"trainer", "t1"}, 12},
		{"fedgather_trainer_samples_total", []string{"trainer", "t2"}, 4800},
		{"fedgather_trainer_compute_seconds_total", []string{"trainer", "t2"}, 4},
		{"fedgather_trainer_samples_per_second", []string{"trainer", "t1"}, 3600},
		{"fedgather_trainer_samples_per_second", []string{"trainer", "t2"}, 1200},
	} {
		v, ok := value(got, c.name, c.labels...)
		if !ok {
			t.Errorf("%s%v: missing", c.name, c.labels)
		} else if v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if n := len(got["fedgather_updates_discarded_total"].GetMetric()); n != 3 {
		t.Errorf("fedgather_updates_discarded_total has %d series, want 3", n)
	}
}

// TestOneSnapshotPerScrape checks that a scrape reads the hub once, so the
// counters it exposes are mutually consistent.
func TestOneSnapshotPerScrape(t *testing.T) {
	hub := &fakeHub{stats: sampleStats()}
	a := New(hub)
	for i := 1; i <= 3; i++ {
		if _, err := a.Registry().Gather(); err != nil {
			t.Fatal(err)
		}
		if got := hub.calls.Load(); got != int64(i) {
			t.Fatalf("after %d scrapes the hub was read %d times", i, got)
		}
	}
}

func TestObserve(t *testing.T) {
	a := New(&fakeHub{})
	a.SetState(job.Report{Round: 3, Rounds: 40, Version: 3, Accuracy: 0.5, TestLoss: 1.5})
	if v, _ := value(gather(t, a.Registry()), "fedgather_round"); v != 3 {
		t.Errorf("round after SetState = %v, want 3", v)
	}
	reports := []job.Report{
		{Round: 4, Rounds: 40, Version: 4, Accuracy: 0.8, TestLoss: 0.7, AggSeconds: 0.004, UpdateNorm: 2.5, ETA: 36 * time.Second,
			Result: &coord.RoundResult{Updates: 10, TrainLoss: 0.9, Seconds: 0.996}},
		{Round: 5, Rounds: 40, Version: 4, Accuracy: 0.8, TestLoss: 0.7, AggSeconds: 0.002, UpdateNorm: 0, ETA: 35 * time.Second,
			Result: &coord.RoundResult{Updates: 0, Seconds: 3}},
	}
	for _, r := range reports {
		a.Observe(r)
	}
	got := gather(t, a.Registry())
	for _, c := range []struct {
		name string
		want float64
	}{
		{"fedgather_round", 5},
		{"fedgather_rounds_planned", 40},
		{"fedgather_model_version", 4},
		{"fedgather_test_accuracy_ratio", 0.8},
		{"fedgather_test_loss", 0.7},
		{"fedgather_train_loss", 0.9}, // kept from the last round that had updates
		{"fedgather_update_norm", 0},
		{"fedgather_round_updates", 0},
		{"fedgather_eta_seconds", 35},
	} {
		if v, _ := value(got, c.name); v != c.want {
			t.Errorf("%s = %v, want %v", c.name, v, c.want)
		}
	}
	h := got["fedgather_round_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-4.002) > 1e-9 {
		t.Errorf("round duration: count %d sum %v, want 2 and 4.002", h.GetSampleCount(), h.GetSampleSum())
	}
	for _, b := range h.GetBucket() {
		want := uint64(0)
		switch {
		case b.GetUpperBound() >= 3.2:
			want = 2
		case b.GetUpperBound() >= 1.6:
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("round duration bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	agg := got["fedgather_aggregation_duration_seconds"].GetMetric()[0].GetHistogram()
	if agg.GetSampleCount() != 2 || math.Abs(agg.GetSampleSum()-0.006) > 1e-12 {
		t.Errorf("aggregation: count %d sum %v, want 2 and 0.006", agg.GetSampleCount(), agg.GetSampleSum())
	}
}

// TestLint runs the Prometheus metric linter over everything the registry
// exposes: names in base units, counters ending in _total, help text.
func TestLint(t *testing.T) {
	a := New(&fakeHub{stats: sampleStats()})
	a.Observe(job.Report{Round: 1, Rounds: 2, Result: &coord.RoundResult{Updates: 1, Seconds: 1}})
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestBoundTrainers(t *testing.T) {
	ts := map[string]coord.TrainerStats{
		"a": {Tasks: 1, Samples: 10, Seconds: 1},
		"b": {Tasks: 2, Samples: 20, Seconds: 1},
		"c": {Tasks: 3, Samples: 30, Seconds: 1},
		"d": {Tasks: 4, Samples: 40, Seconds: 2},
	}
	for _, c := range []struct {
		n    int
		want map[string]coord.TrainerStats
	}{
		{n: 4, want: ts},
		{n: 10, want: ts},
		{n: 2, want: map[string]coord.TrainerStats{
			"a": ts["a"], "b": ts["b"], OtherTrainers: {Tasks: 7, Samples: 70, Seconds: 3},
		}},
		{n: 0, want: map[string]coord.TrainerStats{OtherTrainers: {Tasks: 10, Samples: 100, Seconds: 5}}},
	} {
		got := boundTrainers(ts, c.n)
		if len(got) != len(c.want) {
			t.Errorf("n=%d: %v, want %v", c.n, got, c.want)
			continue
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("n=%d: trainer %q = %+v, want %+v", c.n, k, got[k], v)
			}
		}
	}
}

func TestTrainerLabelBounded(t *testing.T) {
	s := coord.Stats{Trainers: map[string]coord.TrainerStats{}}
	for i := range MaxTrainerSeries + 50 {
		s.Trainers[strings.Repeat("x", i+1)] = coord.TrainerStats{Tasks: 1}
	}
	got := gather(t, New(&fakeHub{stats: s}).Registry())
	if n := len(got["fedgather_trainer_tasks_total"].GetMetric()); n != MaxTrainerSeries+1 {
		t.Errorf("%d trainer series, want %d", n, MaxTrainerSeries+1)
	}
}

func TestHandler(t *testing.T) {
	a := New(&fakeHub{stats: sampleStats()})
	a.Observe(job.Report{Round: 1, Rounds: 2, Accuracy: 0.25, Result: &coord.RoundResult{Updates: 1, Seconds: 1}})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	body := string(b)
	for _, want := range []string{
		"fedgather_test_accuracy_ratio 0.25",
		"fedgather_trainer_tasks_total{trainer=\"t1\"} 12",
		"fedgather_tasks_completed_total 20",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestConcurrentScrapes scrapes while rounds are observed and the hub's
// figures change, for the race detector.
func TestConcurrentScrapes(t *testing.T) {
	hub := &fakeHub{stats: sampleStats()}
	a := New(hub)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 200 {
			a.Observe(job.Report{Round: i, Result: &coord.RoundResult{Updates: 1, Seconds: 0.1}})
			hub.mu.Lock()
			hub.stats.TasksCompleted++
			hub.stats.Trainers["t1"] = coord.TrainerStats{Tasks: int64(i), Samples: int64(i) * 600, Seconds: float64(i)}
			hub.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for range 50 {
			if _, err := a.Registry().Gather(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
}

// gather scrapes reg and returns its families by name.
func gather(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value is the value of the series of family name whose labels include the
// given name/value pairs.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, m := range mfs[name].GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}
