package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"fedgather/internal/job"
	"fedgather/internal/metrics"
)

// metricsOptions are the aggregator's metrics flags.
type metricsOptions struct {
	path string
}

// metricsFlags registers the metrics flags on fs.
func metricsFlags(fs *flag.FlagSet) *metricsOptions {
	o := &metricsOptions{}
	fs.StringVar(&o.path, "metrics-path", "/metrics", "path on -listen serving Prometheus metrics (empty: no metrics)")
	return o
}

// setupMetrics serves /metrics on mux and observes j's rounds.
func setupMetrics(mux *http.ServeMux, j *job.Job, o *metricsOptions) error {
	if o.path == "" {
		return nil
	}
	if !strings.HasPrefix(o.path, "/") || strings.ContainsAny(o.path, " {}") {
		return fmt.Errorf("-metrics-path %q: want a URL path starting with /", o.path)
	}
	if _, taken := mux.Handler(&http.Request{Method: http.MethodGet, URL: &url.URL{Path: o.path}}); taken != "" {
		return fmt.Errorf("-metrics-path %q: the aggregator already serves %s there", o.path, taken)
	}
	m := metrics.New(j.Hub())
	m.SetState(j.State())
	j.Observe(m.Observe)
	mux.Handle(o.path, m.Handler())
	return nil
}
