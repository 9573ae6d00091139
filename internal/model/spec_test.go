package model

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name             string
		inputs, classes  int
		wantName         string
		wantSizes        []int
		wantParams       int
		wantErrSubstring string
	}{
		{name: "logreg", inputs: 784, classes: 10, wantName: "logreg", wantSizes: []int{784, 10}, wantParams: 7850},
		{name: "2nn", inputs: 784, classes: 10, wantName: "2nn", wantSizes: []int{784, 200, 200, 10}, wantParams: 199210},
		{name: "mlp:300,100", inputs: 784, classes: 10, wantName: "mlp:300,100", wantSizes: []int{784, 300, 100, 10}, wantParams: 784*300 + 300 + 300*100 + 100 + 100*10 + 10},
		{name: "mlp:007", inputs: 3, classes: 2, wantName: "mlp:7", wantSizes: []int{3, 7, 2}, wantParams: 3*7 + 7 + 7*2 + 2},
		{name: "cnn", inputs: 784, classes: 10, wantErrSubstring: "unknown model"},
		{name: "", inputs: 784, classes: 10, wantErrSubstring: "unknown model"},
		{name: "2NN", inputs: 784, classes: 10, wantErrSubstring: "unknown model"},
		{name: "mlp:", inputs: 784, classes: 10, wantErrSubstring: "no hidden layer"},
		{name: "mlp:300,", inputs: 784, classes: 10, wantErrSubstring: "not an integer"},
		{name: "mlp:a", inputs: 784, classes: 10, wantErrSubstring: "not an integer"},
		{name: "mlp:0", inputs: 784, classes: 10, wantErrSubstring: "must be positive"},
		{name: "mlp:-5", inputs: 784, classes: 10, wantErrSubstring: "must be positive"},
		{name: "mlp:100000,100000,100000", inputs: 784, classes: 10, wantErrSubstring: "more than the limit"},
		{name: "logreg", inputs: 0, classes: 10, wantErrSubstring: "inputs must be positive"},
		{name: "logreg", inputs: 784, classes: 1, wantErrSubstring: "classes must be at least 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(tt.name, tt.inputs, tt.classes)
			if tt.wantErrSubstring != "" {
				if err == nil {
					t.Fatalf("Parse(%q, %d, %d) = %v, want an error containing %q", tt.name, tt.inputs, tt.classes, s, tt.wantErrSubstring)
				}
				if !errors.Is(err, ErrSpec) {
					t.Errorf("error %q does not wrap ErrSpec", err)
				}
				if !strings.Contains(err.Error(), tt.wantErrSubstring) {
					t.Errorf("error %q does not contain %q", err, tt.wantErrSubstring)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.name, err)
			}
			if s.Name != tt.wantName || !slices.Equal(s.Sizes, tt.wantSizes) {
				t.Errorf("Parse(%q) = %+v, want name %q sizes %v", tt.name, s, tt.wantName, tt.wantSizes)
			}
			if got := s.NumParams(); got != tt.wantParams {
				t.Errorf("NumParams = %d, want %d", got, tt.wantParams)
			}
		})
	}
}

// TestLayersPyTorchLayout checks the offsets against the state_dict order of
// nn.Sequential(nn.Linear(784,200), ReLU, nn.Linear(200,200), ReLU,
// nn.Linear(200,10)) flattened in order.
func TestLayersPyTorchLayout(t *testing.T) {
	s, err := Parse("2nn", 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []Layer{
		{Name: "fc1", In: 784, Out: 200, WOff: 0, BOff: 156800},
		{Name: "fc2", In: 200, Out: 200, WOff: 157000, BOff: 197000},
		{Name: "fc3", In: 200, Out: 10, WOff: 197200, BOff: 199200},
	}
	got := s.Layers()
	if !slices.Equal(got, want) {
		t.Fatalf("Layers() = %+v\nwant        %+v", got, want)
	}
	if end := got[2].BOff + got[2].Out; end != s.NumParams() || s.NumParams() != 199210 {
		t.Errorf("layers end at %d, NumParams = %d, want both 199210", end, s.NumParams())
	}
	// Every parameter belongs to exactly one tensor, tensors tile the vector.
	off := 0
	for _, l := range got {
		if l.WOff != off || l.BOff != off+l.In*l.Out {
			t.Errorf("%s: WOff %d BOff %d, want %d and %d", l.Name, l.WOff, l.BOff, off, off+l.In*l.Out)
		}
		off = l.BOff + l.Out
	}
	lr, _ := Parse("logreg", 784, 10)
	if got, want := lr.Layers(), []Layer{{Name: "fc1", In: 784, Out: 10, WOff: 0, BOff: 7840}}; !slices.Equal(got, want) {
		t.Errorf("logreg Layers() = %+v, want %+v", got, want)
	}
}

func TestEqual(t *testing.T) {
	a, _ := Parse("2nn", 784, 10)
	b, _ := Parse("2nn", 784, 10)
	c, _ := Parse("mlp:200,200", 784, 10)
	d, _ := Parse("2nn", 784, 62)
	if !a.Equal(b) {
		t.Error("two parses of 2nn are not Equal")
	}
	if a.Equal(c) || !a.SameLayout(c) {
		t.Errorf("2nn vs mlp:200,200: Equal %v SameLayout %v, want false, true", a.Equal(c), a.SameLayout(c))
	}
	if a.Equal(d) || a.SameLayout(d) {
		t.Error("2nn with 10 and 62 classes compare equal")
	}
}

func TestInit(t *testing.T) {
	s, _ := Parse("2nn", 784, 10)
	p := make([]float32, s.NumParams())
	q := make([]float32, s.NumParams())
	s.Init(p, 42)
	s.Init(q, 42)
	if !slices.Equal(p, q) {
		t.Fatal("Init with the same seed gave different vectors")
	}
	s.Init(q, 43)
	if slices.Equal(p, q) {
		t.Fatal("Init with seeds 42 and 43 gave the same vector")
	}
	for _, l := range s.Layers() {
		bound := float32(1 / math.Sqrt(float64(l.In)))
		for _, part := range []struct {
			name string
			v    []float32
		}{
			{l.Name + ".weight", p[l.WOff:l.BOff]},
			{l.Name + ".bias", p[l.BOff : l.BOff+l.Out]},
		} {
			lo, hi, sum := float32(math.Inf(1)), float32(math.Inf(-1)), 0.0
			for _, v := range part.v {
				if !(v >= -bound && v <= bound) {
					t.Fatalf("%s: value %g outside ±%g", part.name, v, bound)
				}
				lo, hi, sum = min(lo, v), max(hi, v), sum+float64(v)
			}
			n := len(part.v)
			if n >= 1000 {
				// A uniform sample this large reaches close to both ends and
				// has a mean near zero (standard error bound/sqrt(3n)).
				if lo > -0.99*bound || hi < 0.99*bound {
					t.Errorf("%s: range [%g, %g] does not fill ±%g", part.name, lo, hi, bound)
				}
				if mean := sum / float64(n); math.Abs(mean) > 5*float64(bound)/math.Sqrt(3*float64(n)) {
					t.Errorf("%s: mean %g too far from 0", part.name, mean)
				}
			}
		}
	}
}

func TestInitPanicsOnWrongLength(t *testing.T) {
	s, _ := Parse("logreg", 784, 10)
	defer func() {
		if recover() == nil {
			t.Error("Init with a short vector did not panic")
		}
	}()
	s.Init(make([]float32, 10), 1)
}
