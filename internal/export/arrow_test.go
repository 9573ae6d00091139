package export

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func TestArrowRoundTrip(t *testing.T) {
	spec := mustSpec(t, "2nn", 784, 10)
	p := initParams(spec, 5)
	var b bytes.Buffer
	if err := WriteArrow(&b, spec, p, Meta{Version: 7, Accuracy: 0.875}); err != nil {
		t.Fatal(err)
	}
	got, meta, err := ReadArrow(bytes.NewReader(b.Bytes()), spec)
	if err != nil {
		t.Fatal(err)
	}
	if !sameBits(got, p) {
		t.Error("parameters differ after a round trip")
	}
	if meta.Version != 7 || meta.Accuracy != 0.875 || meta.Model != "2nn" || !slices.Equal(meta.Sizes, spec.Sizes) || meta.Other["format"] != "pt" {
		t.Errorf("meta %+v", meta)
	}

	// What a generic Arrow reader sees: one row per tensor, in order.
	fr, err := ipc.NewFileReader(bytes.NewReader(b.Bytes()), ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	if fr.NumRecords() != 1 {
		t.Fatalf("%d record batches, want 1", fr.NumRecords())
	}
	rec, err := fr.RecordBatch(0)
	if err != nil {
		t.Fatal(err)
	}
	names := rec.Column(0).(*array.String)
	var list []string
	for i := 0; i < names.Len(); i++ {
		list = append(list, names.Value(i))
	}
	want := []string{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
	if !slices.Equal(list, want) {
		t.Errorf("rows %v, want %v", list, want)
	}
	if s := fr.Schema().String(); !strings.Contains(s, "name: type=utf8") || !strings.Contains(s, "shape: type=list<item: int64") || !strings.Contains(s, "values: type=list<item: float32") {
		t.Errorf("schema:\n%s", s)
	}
}

func TestArrowMismatch(t *testing.T) {
	spec := mustSpec(t, "mlp:3", 4, 2)
	var b bytes.Buffer
	if err := WriteArrow(&b, spec, initParams(spec, 1), Meta{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, model string
		want        string
	}{
		{"other hidden width", "mlp:5", "tensor fc1.weight has shape [3 4], but mlp:5(4-5-2) expects [5 4]"},
		{"fewer layers", "logreg", `unexpected tensor "fc2.bias", unexpected tensor "fc2.weight" (logreg(4-2) has tensors fc1.weight, fc1.bias)`},
		{"more layers", "mlp:3,3", "missing tensor fc3.weight, missing tensor fc3.bias"},
	} {
		_, _, err := ReadArrow(bytes.NewReader(b.Bytes()), mustSpec(t, tc.model, 4, 2))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrFormat) {
			t.Errorf("%s: error %v; want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, _, err := ReadArrow(bytes.NewReader(b.Bytes()[:b.Len()/2]), spec); err == nil || !errors.Is(err, ErrFormat) {
		t.Errorf("truncated file: error %v", err)
	}
	if _, _, err := ReadArrow(bytes.NewReader(writeST(t, spec, initParams(spec, 1), Meta{})), spec); err == nil || !errors.Is(err, ErrFormat) {
		t.Errorf("safetensors given as arrow: error %v", err)
	}
}
