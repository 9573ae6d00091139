package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

const committed = "../fedgather.json"

// TestCommittedJSONIsGenerated checks that dashboards/fedgather.json is
// byte for byte what the builder produces.
func TestCommittedJSONIsGenerated(t *testing.T) {
	want, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		line := 1 + bytes.Count(want[:commonPrefix(got, want)], []byte("\n"))
		t.Fatalf("%s differs from the builder's output from line %d on; regenerate it with\n\tgo run ./dashboards/gen > dashboards/fedgather.json", committed, line)
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestCommittedJSONRoundTrips decodes the committed JSON into the SDK's
// typed dashboard (panel options and Prometheus queries into their own
// types), validates it against the schema, and checks that encoding it
// again gives the same bytes: nothing in it falls outside Grafana's schema.
// (v0.0.22's UnmarshalJSONStrict cannot be used: nested decoders return an
// empty error list as a non-nil error, so every panel "fails".)
func TestCommittedJSONRoundTrips(t *testing.T) {
	plugins.RegisterDefaultPlugins() // panel options and Prometheus queries decode to their types
	b, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	var got dashboard.Dashboard
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("decode %s: %v", committed, err)
	}
	if err := got.Validate(); !isNil(err) {
		t.Fatalf("%s does not validate: %v", committed, err)
	}
	again, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if again = append(again, '\n'); !bytes.Equal(again, b) {
		line := 1 + bytes.Count(b[:commonPrefix(again, b)], []byte("\n"))
		t.Fatalf("%s does not survive a decode and encode: it changes from line %d on", committed, line)
	}
}

// isNil reports whether err is no error. The SDK returns its error list
// type even when the list is empty, which makes a non-nil error interface.
func isNil(err error) bool {
	var list cog.BuildErrors
	if errors.As(err, &list) {
		return len(list) == 0
	}
	return err == nil
}

type jsonPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// TestDashboardShape checks what Grafana relies on: unique panel ids,
// panels inside the 24-column grid, every panel querying the $datasource
// variable's Prometheus with at least one expression, and one panel per
// declared panel.
func TestDashboardShape(t *testing.T) {
	b, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string      `json:"uid"`
		Panels     []jsonPanel `json:"panels"`
		Templating struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID != UID {
		t.Errorf("uid %q, want %q", d.UID, UID)
	}
	if len(d.Templating.List) != 1 || d.Templating.List[0].Name != DatasourceVar || d.Templating.List[0].Query != "prometheus" {
		t.Errorf("templating %+v, want one prometheus data source variable %q", d.Templating.List, DatasourceVar)
	}
	ids := map[int]bool{}
	var panels, rowsSeen, queries int
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q has id %d, zero or already used", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q at %+v is outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			rowsSeen++
			continue
		}
		panels++
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${"+DatasourceVar+"}" {
			t.Errorf("panel %q data source %+v, want prometheus ${%s}", p.Title, p.Datasource, DatasourceVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" {
				t.Errorf("panel %q has a query without expression or refId: %+v", p.Title, q)
			}
		}
	}
	wantPanels, wantQueries := 0, 0
	for _, r := range rows {
		wantPanels += len(r.panels)
		for _, p := range r.panels {
			wantQueries += len(p.q)
		}
	}
	if rowsSeen != len(rows) || panels != wantPanels || queries != wantQueries {
		t.Errorf("JSON has %d rows, %d panels, %d queries; declared %d, %d, %d", rowsSeen, panels, queries, len(rows), wantPanels, wantQueries)
	}
	t.Logf("%d rows, %d panels, %d queries", rowsSeen, panels, queries)
}

// TestOperationsDocTable checks that docs/OPERATIONS.md shows the current
// panel and query table.
func TestOperationsDocTable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "OPERATIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), Table()) {
		t.Fatalf("docs/OPERATIONS.md does not hold the current panel table; paste the output of\n\tgo run ./dashboards/gen -table")
	}
}

func TestRun(t *testing.T) {
	var b bytes.Buffer
	if err := run(&b, true); err != nil || b.String() != Table() {
		t.Errorf("run -table: %v, output differs from Table()", err)
	}
	b.Reset()
	want, _ := JSON()
	if err := run(&b, false); err != nil || !bytes.Equal(b.Bytes(), want) {
		t.Errorf("run: %v, output differs from JSON()", err)
	}
}
