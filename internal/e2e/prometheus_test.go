package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rateWindow replaces Grafana's interval variables in the dashboard's
// queries. Grafana sets $__rate_interval to at least four scrape intervals
// (4 s here, with 1 s scrapes) and $__interval to the graph's step; 10 s is
// a window of that kind that also spans several rounds of the run below, so
// rate() and histogram_quantile() see real increases, not just two samples.
const rateWindow = "10s"

// grafanaVars are the dashboard variables a query expression may use and
// what the test substitutes for each. A query using any other variable
// fails the test, so a new variable cannot go unchecked.
var grafanaVars = []struct{ name, value string }{
	{"$__rate_interval", rateWindow},
	{"${__rate_interval}", rateWindow},
	{"$__interval", rateWindow},
	{"${__interval}", rateWindow},
	{"$__range", "1m"},
	{"${__range}", "1m"},
}

// dashboardQuery is one query of the committed dashboard.
type dashboardQuery struct {
	panel, legend, expr string
}

// dashboardQueries returns every query expression of the dashboard JSON at
// path, walking the whole document: panels, rows' nested panels, and
// anything else carrying targets with an expr.
func dashboardQueries(t *testing.T, path string) []dashboardQuery {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []dashboardQuery
	var walk func(v any, panel string)
	walk = func(v any, panel string) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				if _, hasTargets := v["targets"]; hasTargets {
					panel = title
				}
			}
			if expr, ok := v["expr"].(string); ok {
				legend, _ := v["legendFormat"].(string)
				out = append(out, dashboardQuery{panel: panel, legend: legend, expr: expr})
			}
			for _, x := range v {
				walk(x, panel)
			}
		case []any:
			for _, x := range v {
				walk(x, panel)
			}
		}
	}
	walk(doc, "")
	return out
}

// substitute replaces the Grafana variables of expr with concrete values.
func substitute(t *testing.T, expr string) string {
	t.Helper()
	for _, v := range grafanaVars {
		expr = strings.ReplaceAll(expr, v.name, v.value)
	}
	if strings.Contains(expr, "$") {
		t.Fatalf("query %q uses a Grafana variable the test does not know; add it to grafanaVars", expr)
	}
	return expr
}

// promClient queries a Prometheus HTTP API.
type promClient struct {
	base string
	http *http.Client
}

// query runs an instant query and returns the number of series (or 1 for a
// scalar) it returned.
func (c *promClient) query(ctx context.Context, expr string) (int, error) {
	u := c.base + "/api/v1/query?" + url.Values{"query": {expr}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("HTTP %s, undecodable answer %.200q: %w", resp.Status, body, err)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("HTTP %s: %s", resp.Status, r.Error)
	}
	switch r.Data.ResultType {
	case "vector", "matrix":
		var series []json.RawMessage
		if err := json.Unmarshal(r.Data.Result, &series); err != nil {
			return 0, err
		}
		return len(series), nil
	case "scalar", "string":
		return 1, nil
	}
	return 0, fmt.Errorf("unknown result type %q", r.Data.ResultType)
}

// value runs an instant query that returns one series and gives its value.
func (c *promClient) value(ctx context.Context, expr string) (float64, bool) {
	u := c.base + "/api/v1/query?" + url.Values{"query": {expr}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, false
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r) != nil || len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// waitFor polls cond every 250 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestPrometheusDashboardQueries runs a real aggregator and two trainers
// (with -metrics), a real Prometheus scraping all three every second, and
// sends every query of the committed dashboard to Prometheus's HTTP API:
// each must return data.
func TestPrometheusDashboardQueries(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("FEDGATHER_REQUIRE_SYSTEM") == "1" {
			t.Fatalf("prometheus is not installed (scripts/setup installs Debian's package): %v", err)
		}
		t.Skipf("prometheus not installed: %v", err)
	}
	began := time.Now()
	dashboard := filepath.Join(bin.root, "dashboards", "fedgather.json")
	queries := dashboardQueries(t, dashboard)
	if len(queries) == 0 {
		t.Fatalf("no query in %s", dashboard)
	}

	// The sample scrape configuration shipped for operators must be valid.
	if promtool, err := exec.LookPath("promtool"); err == nil {
		out, err := exec.Command(promtool, "check", "config", filepath.Join(bin.root, "dashboards", "prometheus.yml")).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool check config dashboards/prometheus.yml: %v\n%s", err, out)
		}
	}

	// Enough rounds to stay live for the whole test; it is killed at the end.
	_, addr := aggregator(t, "-rounds", "300", "-min-trainers", "2", "-log-level", "warn")
	t.Logf("aggregator listening after %.1fs", time.Since(began).Seconds())
	trainers := []string{"t1", "t2"}
	var targets []string
	for _, name := range trainers {
		maddr := freeAddr(t)
		trainer(t, addr, name, "-metrics", maddr, "-log-level", "warn")
		targets = append(targets, maddr)
	}

	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: fedgather-aggregator
    static_configs:
      - targets: [%q]
  - job_name: fedgather-trainers
    static_configs:
      - targets: [%q, %q]
`, addr, targets[0], targets[1])
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	// start registers a cleanup that kills Prometheus; it runs before the
	// TempDir holding its data is removed.
	start(t, "prometheus", promBin,
		"--config.file="+configPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn",
	)
	prom := &promClient{base: "http://" + promAddr, http: &http.Client{Timeout: 5 * time.Second}}
	ctx := t.Context()

	waitFor(t, 30*time.Second, "Prometheus to be ready", func() bool {
		resp, err := prom.http.Get(prom.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	t.Logf("Prometheus ready after %.1fs", time.Since(began).Seconds())
	// Enough samples: every target up for at least 8 scrapes of the rate
	// window, and a few rounds done.
	waitFor(t, 40*time.Second, "three targets scraped 8 times and 3 rounds done", func() bool {
		up, _ := prom.value(ctx, `count(count_over_time(up[`+rateWindow+`]) >= 8 and on (instance) (up == 1))`)
		round, _ := prom.value(ctx, `min(fedgather_round)`)
		return up == 3 && round >= 3
	})
	round, _ := prom.value(ctx, `min(fedgather_round)`)
	t.Logf("data ready after %.1fs, at round %v", time.Since(began).Seconds(), round)

	empty := 0
	for i, q := range queries {
		expr := substitute(t, q.expr)
		var n int
		var qerr error
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, qerr = prom.query(ctx, expr)
			if (qerr == nil && n > 0) || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		switch {
		case qerr != nil:
			empty++
			t.Errorf("query %d (%s / %s) %s: %v", i+1, q.panel, q.legend, expr, qerr)
		case n == 0:
			empty++
			t.Errorf("query %d (%s / %s) returned no data: %s", i+1, q.panel, q.legend, expr)
		case strings.Contains(q.legend, "{{trainer}}") && n != len(trainers):
			t.Errorf("query %d (%s / %s) returned %d series, want one per trainer (%d): %s", i+1, q.panel, q.legend, n, len(trainers), expr)
		default:
			t.Logf("query %2d: %d series  [%s / %s] %s", i+1, n, q.panel, q.legend, expr)
		}
	}
	t.Logf("checked %d dashboard queries with $__rate_interval = $__interval = %s: %d returned data, %d did not; %.1fs in all",
		len(queries), rateWindow, len(queries)-empty, empty, time.Since(began).Seconds())
}

// TestMetricsFlagErrors checks that a bad metrics flag stops either
// command at start with a message naming the flag.
func TestMetricsFlagErrors(t *testing.T) {
	// A tiny table dataset, so the aggregator gets to its metrics set-up
	// without loading MNIST.
	var csv strings.Builder
	csv.WriteString("label,x1,x2\n")
	for i := range 40 {
		fmt.Fprintf(&csv, "%d,%d.5,%d\n", i%2, i%2, i%7)
	}
	table := filepath.Join(t.TempDir(), "tiny.csv")
	if err := os.WriteFile(table, []byte(csv.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	small := []string{"-listen", "127.0.0.1:0", "-dataset", table, "-model", "logreg", "-clients", "4"}
	for _, tc := range []struct {
		name, path string
		args       []string
		want       string
	}{
		{"aggregator path taken", bin.aggregator, slices.Concat(small, []string{"-metrics-path", "/healthz"}), "-metrics-path"},
		{"aggregator relative path", bin.aggregator, slices.Concat(small, []string{"-metrics-path", "metrics"}), "want a URL path starting with /"},
		{"trainer bad address", bin.trainer, []string{"-aggregator", "127.0.0.1:1", "-metrics", "256.0.0.1:1"}, "-metrics 256.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, tc.name, tc.path, tc.args...)
			if code := p.wait(time.Minute); code != 2 || !strings.Contains(p.Stderr(), tc.want) {
				t.Errorf("%v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, p.Stderr(), tc.want)
			}
		})
	}
}
