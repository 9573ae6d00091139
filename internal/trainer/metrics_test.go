package trainer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.taskDone(10, time.Second)
	m.setConnected(true)
	m.reconnect()
	m.addReceived(5)
	var b bytes.Buffer
	if w := m.countSent(&b); w != io.Writer(&b) {
		t.Errorf("nil metrics wrapped the writer")
	}
}

func TestWorkerMetrics(t *testing.T) {
	m := NewMetrics("t7")
	m.taskDone(600, 200*time.Millisecond)
	m.taskDone(1200, 300*time.Millisecond)
	m.setConnected(true)
	m.reconnect()
	m.reconnect()
	m.addReceived(1000)
	m.addReceived(24)
	var sink bytes.Buffer
	w := m.countSent(&sink)
	for _, s := range []string{"hello", ", world"} {
		if _, err := io.WriteString(w, s); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, x := range mf.GetMetric() {
			v := x.GetGauge().GetValue() + x.GetCounter().GetValue()
			if mf.GetName() == "fedgather_worker_info" {
				if len(x.GetLabel()) != 1 || x.GetLabel()[0].GetValue() != "t7" {
					t.Errorf("fedgather_worker_info labels %v, want trainer=t7", x.GetLabel())
				}
			}
			got[mf.GetName()] = v
		}
	}
	for name, want := range map[string]float64{
		"fedgather_worker_info":                  1,
		"fedgather_worker_tasks_total":           2,
		"fedgather_worker_samples_total":         1800,
		"fedgather_worker_compute_seconds_total": 0.5,
		"fedgather_worker_samples_per_second":    3600,
		"fedgather_worker_connected":             1,
		"fedgather_worker_reconnects_total":      2,
		"fedgather_worker_sent_bytes_total":      12,
		"fedgather_worker_received_bytes_total":  1024,
	} {
		if g, ok := got[name]; !ok || g != want {
			t.Errorf("%s = %v (present %v), want %v", name, g, ok, want)
		}
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	m.setConnected(false)
	mfs, _ = m.Registry().Gather()
	for _, mf := range mfs {
		if mf.GetName() == "fedgather_worker_connected" && mf.GetMetric()[0].GetGauge().GetValue() != 0 {
			t.Error("still connected after setConnected(false)")
		}
	}
}

func TestServeMetrics(t *testing.T) {
	ln, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics("t1")
	m.taskDone(10, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Serve(ctx, ln, slog.New(slog.DiscardHandler))
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "fedgather_worker_tasks_total 1") {
		t.Errorf("/metrics lacks the task counter:\n%s", b)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if ln, err := listenMetrics(""); ln != nil || err != nil {
		t.Errorf(`listenMetrics("") = %v, %v; want nothing`, ln, err)
	}
	if _, err := listenMetrics("256.0.0.1:99999"); err == nil {
		t.Error("a bad address was accepted")
	}
}
