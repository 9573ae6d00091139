package metrics_test

import (
	"fmt"
	"net/http"
	"time"

	"fedgather/internal/coord"
	"fedgather/internal/job"
	"fedgather/internal/metrics"
)

// staticHub stands in for a *coord.Hub.
type staticHub struct{ s coord.Stats }

func (h staticHub) Snapshot() coord.Stats { return h.s }

// Example wires the metrics to a job's observer and serves them. In the
// aggregator the source is the job's hub (j.Hub()) and Observe is
// registered with j.Observe.
func Example() {
	hub := staticHub{coord.Stats{TrainersConnected: 2, TasksAssigned: 11, TasksCompleted: 10}}
	m := metrics.New(hub)
	observe := m.Observe // j.Observe(m.Observe)
	observe(job.Report{Round: 1, Rounds: 100, Version: 1, Accuracy: 0.87, TestLoss: 0.45,
		AggSeconds: 0.01, UpdateNorm: 1.7, ETA: 99 * time.Second,
		Result: &coord.RoundResult{Updates: 10, TrainLoss: 0.52, Seconds: 0.6}})

	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())

	mfs, _ := m.Registry().Gather()
	for _, mf := range mfs {
		switch mf.GetName() {
		case "fedgather_test_accuracy_ratio", "fedgather_tasks_completed_total", "fedgather_trainers_connected":
			v := mf.GetMetric()[0]
			fmt.Println(mf.GetName(), v.GetGauge().GetValue()+v.GetCounter().GetValue())
		}
	}
	// Output:
	// fedgather_tasks_completed_total 10
	// fedgather_test_accuracy_ratio 0.87
	// fedgather_trainers_connected 2
}
