// Command gen writes the fedgather Grafana dashboard, built with Grafana's
// typed Go builder (grafana-foundation-sdk), as JSON on stdout:
//
//	go run ./dashboards/gen > dashboards/fedgather.json
//
// With -table it prints instead the Markdown table of every panel and the
// queries behind it, as docs/OPERATIONS.md shows it.
//
// The panels are declared once, in rows below; the JSON, the table and the
// tests (the committed JSON is what this builds; every query returns data
// from a live Prometheus scraping a real run) all derive from them.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
	"github.com/grafana/grafana-foundation-sdk/go/units"
)

// UID is the dashboard's stable identifier: links and provisioning use it.
const UID = "fedgather"

// DatasourceVar is the dashboard variable choosing the Prometheus data
// source every panel queries.
const DatasourceVar = "datasource"

// rate is Grafana's rate window variable: at least four scrape intervals.
const rate = "$__rate_interval"

// instances keeps only the series of fedgather processes: the aggregator
// exports fedgather_round, a trainer started with -metrics
// fedgather_worker_info.
const instances = `and on (instance) (fedgather_round or fedgather_worker_info)`

// workerName puts the trainer's name, from fedgather_worker_info, on a
// trainer process's own series.
const workerName = `* on (instance) group_left (trainer) fedgather_worker_info`

type kind int

const (
	timeSeries kind = iota
	statPanel
)

type query struct {
	legend string
	expr   string
}

type panel struct {
	title  string
	desc   string
	kind   kind
	unit   string
	span   uint32
	height uint32
	min    *float64
	max    *float64
	stack  bool
	q      []query
}

type row struct {
	title  string
	panels []panel
}

func ptr(f float64) *float64 { return &f }

func quantile(q, hist string) string {
	return fmt.Sprintf("histogram_quantile(%s, sum by (le) (rate(%s_bucket[%s])))", q, hist, rate)
}

func mean(hist string) string {
	return fmt.Sprintf("rate(%s_sum[%s]) / rate(%s_count[%s])", hist, rate, hist, rate)
}

func perMinute(counter string) string {
	return fmt.Sprintf("60 * rate(%s[%s])", counter, rate)
}

// rows are the dashboard's panels, top to bottom.
var rows = []row{
	{"Progress", []panel{
		{title: "Round", kind: statPanel, span: 6, height: 4, unit: units.Short,
			desc: "Rounds completed, rounds planned (-rounds) and the global model's version.",
			q: []query{
				{"completed", "fedgather_round"},
				{"planned", "fedgather_rounds_planned"},
				{"model version", "fedgather_model_version"},
			}},
		{title: "Test accuracy", kind: statPanel, span: 6, height: 4, unit: units.PercentUnit,
			desc: "Accuracy of the global model on the test set after the last round.",
			q:    []query{{"accuracy", "fedgather_test_accuracy_ratio"}}},
		{title: "Trainers connected", kind: statPanel, span: 6, height: 4, unit: units.Short,
			desc: "Trainer connections the aggregator holds now.",
			q:    []query{{"trainers", "fedgather_trainers_connected"}}},
		{title: "Time left", kind: statPanel, span: 6, height: 4, unit: units.Seconds,
			desc: "Estimated time for the remaining rounds at the median round time.",
			q:    []query{{"eta", "fedgather_eta_seconds"}}},
	}},
	{"Model", []panel{
		{title: "Test accuracy over time", span: 12, unit: units.PercentUnit, max: ptr(1),
			desc: "Test accuracy of the global model after each round.",
			q:    []query{{"test accuracy", "fedgather_test_accuracy_ratio"}}},
		{title: "Loss", span: 12, unit: units.Short, min: ptr(0),
			desc: "Test loss of the global model, and the sample-weighted mean training loss the round's updates reported.",
			q: []query{
				{"test", "fedgather_test_loss"},
				{"train", "fedgather_train_loss"},
			}},
		{title: "Update norm", span: 12, unit: units.Short, min: ptr(0),
			desc: "L2 norm of the round's weighted mean update, before the server step.",
			q:    []query{{"‖Δw‖", "fedgather_update_norm"}}},
		{title: "Updates per round", span: 12, unit: units.Short, min: ptr(0),
			desc: "Updates folded into the last round's mean (m, unless tasks were dropped).",
			q:    []query{{"updates", "fedgather_round_updates"}}},
	}},
	{"Round time", []panel{
		{title: "Round duration", span: 8, unit: units.Seconds, min: ptr(0),
			desc: "Wall time of a round (scatter, gather, aggregation): median, 95th percentile and mean over the rate window.",
			q: []query{
				{"p50", quantile("0.5", "fedgather_round_duration_seconds")},
				{"p95", quantile("0.95", "fedgather_round_duration_seconds")},
				{"mean", mean("fedgather_round_duration_seconds")},
			}},
		{title: "Aggregation time", span: 8, unit: units.Seconds, min: ptr(0),
			desc: "Time after a round's gather: server step and bookkeeping (with -eval local, the evaluation too).",
			q: []query{
				{"p50", quantile("0.5", "fedgather_aggregation_duration_seconds")},
				{"p95", quantile("0.95", "fedgather_aggregation_duration_seconds")},
				{"mean", mean("fedgather_aggregation_duration_seconds")},
			}},
		{title: "Rounds per minute", span: 8, unit: units.Short, min: ptr(0),
			desc: "Rounds completed per minute.",
			q:    []query{{"rounds/min", perMinute("fedgather_round_duration_seconds_count")}}},
	}},
	{"Trainers", []panel{
		{title: "Trainers connected over time", span: 8, unit: units.Short, min: ptr(0),
			desc: "Connections the aggregator holds, and trainer processes that report themselves connected (those started with -metrics).",
			q: []query{
				{"aggregator's view", "fedgather_trainers_connected"},
				{"trainers reporting connected", "sum(fedgather_worker_connected)"},
			}},
		{title: "Throughput per trainer", span: 8, unit: units.Short, min: ptr(0),
			desc: "Samples per compute second each trainer has shown, as the aggregator measures it from the updates.",
			q:    []query{{"{{trainer}}", "fedgather_trainer_samples_per_second"}}},
		{title: "Samples trained per second", span: 8, unit: units.Short, min: ptr(0), stack: true,
			desc: "Training examples in counted updates per wall-clock second, by trainer: the load balance of the pull queue.",
			q:    []query{{"{{trainer}}", fmt.Sprintf("sum by (trainer) (rate(fedgather_trainer_samples_total[%s]))", rate)}}},
		{title: "Tasks per minute by trainer", span: 8, unit: units.Short, min: ptr(0), stack: true,
			desc: "Counted tasks per minute, by trainer.",
			q:    []query{{"{{trainer}}", fmt.Sprintf("60 * sum by (trainer) (rate(fedgather_trainer_tasks_total[%s]))", rate)}}},
		{title: "Trainer processes: own throughput", span: 8, unit: units.Short, min: ptr(0),
			desc: "Samples per compute second each trainer process reports on its own /metrics (-metrics).",
			q:    []query{{"{{trainer}}", "fedgather_worker_samples_per_second " + workerName}}},
		{title: "Trainer reconnects", span: 8, unit: units.Short, min: ptr(0),
			desc: "Lost connections each trainer process has retried since it started.",
			q:    []query{{"{{trainer}}", "fedgather_worker_reconnects_total " + workerName}}},
	}},
	{"Tasks", []panel{
		{title: "Task outcomes", span: 12, unit: units.Short, min: ptr(0),
			desc: "Task events per minute: attempts assigned, tasks completed (once each), attempts failed, tasks requeued, re-issued past their deadline, dropped.",
			q: []query{
				{"assigned", perMinute("fedgather_tasks_assigned_total")},
				{"completed", perMinute("fedgather_tasks_completed_total")},
				{"failed", perMinute("fedgather_tasks_failed_total")},
				{"requeued", perMinute("fedgather_tasks_requeued_total")},
				{"reissued", perMinute("fedgather_tasks_reissued_total")},
				{"dropped", perMinute("fedgather_tasks_dropped_total")},
			}},
		{title: "Discarded updates", span: 12, unit: units.Short, min: ptr(0), stack: true,
			desc: "Updates not folded, per minute, by reason: duplicate, stale or rejected.",
			q:    []query{{"{{reason}}", fmt.Sprintf("sum by (reason) (60 * rate(fedgather_updates_discarded_total[%s]))", rate)}}},
	}},
	{"Network", []panel{
		{title: "Aggregator network", span: 8, unit: units.BytesPerSecondIEC, min: ptr(0),
			desc: "Protocol bytes per second the aggregator sends to and receives from trainers.",
			q: []query{
				{"sent", fmt.Sprintf("rate(fedgather_network_sent_bytes_total[%s])", rate)},
				{"received", fmt.Sprintf("rate(fedgather_network_received_bytes_total[%s])", rate)},
			}},
		{title: "Models and shards sent", span: 8, unit: units.Short, min: ptr(0),
			desc: "Model and shard frames sent per minute: a model once per trainer per round, a shard once per trainer.",
			q: []query{
				{"models", perMinute("fedgather_models_sent_total")},
				{"shards", perMinute("fedgather_shards_sent_total")},
			}},
		{title: "Trainer network", span: 8, unit: units.BytesPerSecondIEC, min: ptr(0),
			desc: "Protocol bytes per second each trainer process receives and sends (-metrics).",
			q: []query{
				{"{{trainer}} received", fmt.Sprintf("rate(fedgather_worker_received_bytes_total[%s]) %s", rate, workerName)},
				{"{{trainer}} sent", fmt.Sprintf("rate(fedgather_worker_sent_bytes_total[%s]) %s", rate, workerName)},
			}},
	}},
	{"Processes", []panel{
		{title: "Resident memory", span: 8, unit: units.BytesIEC, min: ptr(0),
			desc: "Resident set size of the aggregator and the trainer processes.",
			q:    []query{{"{{job}} {{instance}}", "process_resident_memory_bytes " + instances}}},
		{title: "CPU", span: 8, unit: units.Short, min: ptr(0),
			desc: "CPU seconds per second (cores busy) of each process.",
			q:    []query{{"{{job}} {{instance}}", fmt.Sprintf("rate(process_cpu_seconds_total[%s]) %s", rate, instances)}}},
		{title: "Goroutines", span: 8, unit: units.Short, min: ptr(0),
			desc: "Goroutines of each process.",
			q:    []query{{"{{job}} {{instance}}", "go_goroutines " + instances}}},
	}},
}

func datasource() common.DataSourceRef {
	typ, uid := "prometheus", "${"+DatasourceVar+"}"
	return common.DataSourceRef{Type: &typ, Uid: &uid}
}

func targets(p panel) []cog.Builder[variants.Dataquery] {
	out := make([]cog.Builder[variants.Dataquery], len(p.q))
	for i, q := range p.q {
		b := prometheus.NewDataqueryBuilder().
			Datasource(datasource()).
			RefId(string(rune('A' + i))).
			Expr(q.expr).
			LegendFormat(q.legend)
		if p.kind == statPanel {
			b = b.Instant()
		} else {
			b = b.Range()
		}
		out[i] = b
	}
	return out
}

// build makes one panel with the given unique id.
func build(p panel, id uint32) cog.Builder[dashboard.Panel] {
	height := p.height
	if height == 0 {
		height = 8
	}
	switch p.kind {
	case statPanel:
		return stat.NewPanelBuilder().
			Id(id).Title(p.title).Description(p.desc).Datasource(datasource()).
			Span(p.span).Height(height).Unit(p.unit).
			GraphMode(common.BigValueGraphModeArea).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false)).
			Targets(targets(p))
	default:
		b := timeseries.NewPanelBuilder().
			Id(id).Title(p.title).Description(p.desc).Datasource(datasource()).
			Span(p.span).Height(height).Unit(p.unit).
			LineWidth(1).FillOpacity(10).ShowPoints(common.VisibilityModeNever).
			Legend(common.NewVizLegendOptionsBuilder().
				DisplayMode(common.LegendDisplayModeList).
				Placement(common.LegendPlacementBottom).
				ShowLegend(true)).
			Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending)).
			Targets(targets(p))
		if p.min != nil {
			b = b.Min(*p.min)
		}
		if p.max != nil {
			b = b.Max(*p.max)
		}
		if p.stack {
			b = b.Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal))
		}
		return b
	}
}

// Dashboard builds the dashboard.
func Dashboard() (dashboard.Dashboard, error) {
	d := dashboard.NewDashboardBuilder("fedgather").
		Uid(UID).
		Description("A fedgather federated training run: model quality, round time, trainers, task accounting, network and processes. Every query is checked against a live Prometheus by internal/e2e.").
		Tags([]string{"fedgather", "federated-learning"}).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("10s").
		Time("now-30m", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder(DatasourceVar).
			Label("Prometheus").
			Type("prometheus"))
	var id uint32
	for _, r := range rows {
		id++
		d = d.WithRow(dashboard.NewRowBuilder(r.title).Id(id))
		for _, p := range r.panels {
			id++
			d = d.WithPanel(build(p, id))
		}
	}
	return d.Build()
}

// JSON is the dashboard as the committed dashboards/fedgather.json holds
// it: indented with two spaces, ending with a newline.
func JSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, fmt.Errorf("build the dashboard: %w", err)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode the dashboard: %w", err)
	}
	return append(b, '\n'), nil
}

// Table is the Markdown table of every panel and its queries, in
// dashboard order, as docs/OPERATIONS.md shows it.
func Table() string {
	var b strings.Builder
	b.WriteString("| row | panel | legend | query |\n|---|---|---|---|\n")
	for _, r := range rows {
		for _, p := range r.panels {
			for _, q := range p.q {
				fmt.Fprintf(&b, "| %s | %s | %s | `%s` |\n", r.title, p.title, q.legend, q.expr)
			}
		}
	}
	return b.String()
}

func main() {
	table := flag.Bool("table", false, "print the Markdown panel/query table instead of the dashboard JSON")
	flag.Parse()
	if err := run(os.Stdout, *table); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, table bool) error {
	if table {
		_, err := io.WriteString(w, Table())
		return err
	}
	b, err := JSON()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
