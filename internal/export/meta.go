// Package export writes a model's weights in formats other tools load, and
// reads them back strictly.
//
// Two formats are supported:
//
//   - safetensors (https://github.com/huggingface/safetensors): an 8-byte
//     little-endian header length N, an N-byte JSON header naming every
//     tensor with its dtype, shape and byte range, then the raw
//     little-endian tensor bytes. Tensors are named and shaped exactly like
//     the state dict of a PyTorch module whose nn.Linear layers are
//     attributes fc1, fc2, …: "fc1.weight" [out, in], "fc1.bias" [out], and
//     so on. Such a file loads into that module with
//     load_state_dict(strict=True).
//   - Arrow IPC file: one row per tensor, schema
//     {name: utf8, shape: list<int64>, values: list<float32>}.
//
// Both carry the same metadata (see [Meta]): in the safetensors header's
// "__metadata__" object and in the Arrow schema's metadata.
//
// Readers validate everything against the model the caller expects
// ([model.Spec]) and return errors that name the problem: a truncated file,
// bad JSON, a missing or unexpected tensor, a wrong shape or dtype,
// overlapping or out-of-range byte ranges, non-finite values.
package export

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"fedgather/internal/model"
)

// Metadata keys written by this package. Both formats use the same keys and
// string values.
const (
	// KeyFormat is "pt": the tensors follow PyTorch's conventions (the
	// safetensors library's torch loader checks for this value).
	KeyFormat = "format"
	// KeyProducer is "fedgather".
	KeyProducer = "producer"
	// KeyModel is the model's name as accepted by -model: "2nn", "logreg",
	// "mlp:H1,H2,…".
	KeyModel = "model"
	// KeySizes is the layer widths, inputs first, comma-separated:
	// "784,200,200,10".
	KeySizes = "sizes"
	// KeyVersion is the model version, the number of server steps applied,
	// in decimal.
	KeyVersion = "version"
	// KeyAccuracy is the test accuracy of these weights as measured by the
	// aggregator, a decimal fraction in [0, 1].
	KeyAccuracy = "accuracy"
)

// ErrFormat is wrapped by every error a reader returns for a file that is
// malformed or does not hold the expected model.
var ErrFormat = errors.New("export: invalid model file")

// maxElements bounds one file's tensor data, in float32 values; it is the
// model package's parameter limit.
const maxElements = 1 << 30

// Meta is the metadata stored with exported weights.
type Meta struct {
	// Model is the model's name ("2nn", "logreg", "mlp:…"); empty when the
	// file does not say.
	Model string
	// Sizes lists the layer widths, inputs first; nil when the file does
	// not say.
	Sizes []int
	// Version is the model version (server steps applied).
	Version int
	// Accuracy is the test accuracy the aggregator measured for these
	// weights; NaN when the file does not say.
	Accuracy float64
	// Other holds metadata entries this package does not interpret, such
	// as "format" and "producer" when reading.
	Other map[string]string
}

// entries returns the metadata to write for spec: m's Version and
// Accuracy, spec's name and sizes, format "pt" and producer "fedgather",
// plus m.Other (which cannot override the fixed keys).
func (m Meta) entries(spec model.Spec) map[string]string {
	e := make(map[string]string, len(m.Other)+6)
	for k, v := range m.Other {
		e[k] = v
	}
	e[KeyFormat] = "pt"
	e[KeyProducer] = "fedgather"
	e[KeyModel] = spec.Name
	e[KeySizes] = joinInts(spec.Sizes, ",")
	e[KeyVersion] = strconv.Itoa(m.Version)
	if !math.IsNaN(m.Accuracy) {
		e[KeyAccuracy] = strconv.FormatFloat(m.Accuracy, 'f', -1, 64)
	}
	return e
}

// parseMeta interprets metadata entries read from a file. Entries it
// does not know are kept in Other; a known entry with a malformed value is
// an error.
func parseMeta(e map[string]string) (Meta, error) {
	m := Meta{Accuracy: math.NaN()}
	for k, v := range e {
		switch k {
		case KeyModel:
			m.Model = v
		case KeySizes:
			for f := range strings.SplitSeq(v, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n <= 0 {
					return Meta{}, fmt.Errorf("%w: metadata %q = %q: expected comma-separated positive layer widths", ErrFormat, k, v)
				}
				m.Sizes = append(m.Sizes, n)
			}
		case KeyVersion:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return Meta{}, fmt.Errorf("%w: metadata %q = %q: expected a non-negative integer", ErrFormat, k, v)
			}
			m.Version = n
		case KeyAccuracy:
			a, err := strconv.ParseFloat(v, 64)
			if err != nil || !(a >= 0 && a <= 1) {
				return Meta{}, fmt.Errorf("%w: metadata %q = %q: expected a number in [0, 1]", ErrFormat, k, v)
			}
			m.Accuracy = a
		default:
			if m.Other == nil {
				m.Other = make(map[string]string)
			}
			m.Other[k] = v
		}
	}
	return m, nil
}

// checkMetaSizes reports an error when the metadata names layer sizes
// that differ from spec's: the file then contradicts itself.
func checkMetaSizes(m Meta, spec model.Spec) error {
	if m.Sizes != nil && !slices.Equal(m.Sizes, spec.Sizes) {
		return fmt.Errorf("%w: metadata %q says %s but the tensors are %s", ErrFormat, KeySizes, joinInts(m.Sizes, "-"), joinInts(spec.Sizes, "-"))
	}
	return nil
}

// tensorShape is one expected tensor: its state-dict name, its shape and
// where its values sit in the flat parameter vector.
type tensorShape struct {
	name  string
	shape []int
	off   int
}

func (t tensorShape) size() int {
	n := 1
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// layout lists spec's tensors in parameter order: fc1.weight [out, in],
// fc1.bias [out], fc2.weight, …
func layout(spec model.Spec) []tensorShape {
	var ts []tensorShape
	for _, l := range spec.Layers() {
		ts = append(ts,
			tensorShape{name: l.Name + ".weight", shape: []int{l.Out, l.In}, off: l.WOff},
			tensorShape{name: l.Name + ".bias", shape: []int{l.Out}, off: l.BOff})
	}
	return ts
}

// checkNames compares the tensor names a file holds with those spec
// expects and describes every difference.
func checkNames(have []string, spec model.Spec, want []tensorShape) error {
	haveSet := make(map[string]bool, len(have))
	for _, n := range have {
		haveSet[n] = true
	}
	wantSet := make(map[string]bool, len(want))
	var problems []string
	for _, t := range want {
		wantSet[t.name] = true
		if !haveSet[t.name] {
			problems = append(problems, "missing tensor "+t.name)
		}
	}
	extra := make([]string, 0)
	for _, n := range have {
		if !wantSet[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		problems = append(problems, fmt.Sprintf("unexpected tensor %q", n))
	}
	if len(problems) == 0 {
		return nil
	}
	const show = 6
	if len(problems) > show {
		problems = append(problems[:show], fmt.Sprintf("and %d more differences", len(problems)-show))
	}
	names := make([]string, len(want))
	for i, t := range want {
		names[i] = t.name
	}
	return fmt.Errorf("%w: %s (%s has tensors %s)", ErrFormat, strings.Join(problems, ", "), spec, strings.Join(names, ", "))
}

// checkFinite returns an error naming the first NaN or infinite value of
// tensor t, whose values are vals. It does not wrap ErrFormat: a reader
// wraps it, a writer reports it as a refusal.
func checkFinite(t tensorShape, vals []float32) error {
	for i, v := range vals {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			where := fmt.Sprintf("index %d", i)
			if len(t.shape) == 2 {
				where = fmt.Sprintf("[%d, %d]", i/t.shape[1], i%t.shape[1])
			}
			return fmt.Errorf("tensor %s holds %v at %s; weights must be finite", t.name, v, where)
		}
	}
	return nil
}

// checkParams is what both writers require of the vector they export.
func checkParams(spec model.Spec, params []float32) error {
	if len(spec.Sizes) < 2 {
		return fmt.Errorf("export: model %s has no layers", spec)
	}
	if want := spec.NumParams(); len(params) != want {
		return fmt.Errorf("export: %d parameters given, %s has %d", len(params), spec, want)
	}
	for _, t := range layout(spec) {
		if err := checkFinite(t, params[t.off:t.off+t.size()]); err != nil {
			return fmt.Errorf("export: refusing to write: %w", err)
		}
	}
	return nil
}

// inferSpec builds the Spec whose tensors are described by shape, a
// lookup of a file's tensors: fc1.weight [h1, in], fc2.weight [h2, h1], …
// The name is metaName when that names a model with the same layout, else
// "logreg" or "mlp:h1,h2,…". Only the weights are consulted; the caller
// checks the full tensor set against the result.
func inferSpec(shape func(name string) ([]int, bool), metaName string) (model.Spec, error) {
	var sizes []int
	for k := 1; ; k++ {
		name := fmt.Sprintf("fc%d.weight", k)
		s, ok := shape(name)
		if !ok {
			break
		}
		if len(s) != 2 {
			return model.Spec{}, fmt.Errorf("%w: tensor %s has shape %v; an nn.Linear weight is 2-D [out, in]", ErrFormat, name, s)
		}
		if k == 1 {
			sizes = append(sizes, s[1])
		} else if prev := sizes[len(sizes)-1]; s[1] != prev {
			return model.Spec{}, fmt.Errorf("%w: tensor %s has shape %v: %d inputs, but fc%d has %d outputs", ErrFormat, name, s, s[1], k-1, prev)
		}
		sizes = append(sizes, s[0])
	}
	if len(sizes) == 0 {
		return model.Spec{}, fmt.Errorf("%w: no tensor fc1.weight; expected nn.Linear layers named fc1, fc2, …", ErrFormat)
	}
	in, classes := sizes[0], sizes[len(sizes)-1]
	if metaName != "" {
		if s, err := model.Parse(metaName, in, classes); err == nil && slices.Equal(s.Sizes, sizes) {
			return s, nil
		}
	}
	name := "logreg"
	if len(sizes) > 2 {
		name = "mlp:" + joinInts(sizes[1:len(sizes)-1], ",")
	}
	s, err := model.Parse(name, in, classes)
	if err != nil {
		return model.Spec{}, fmt.Errorf("%w: layers %s: %w", ErrFormat, joinInts(sizes, "-"), err)
	}
	return s, nil
}

func joinInts(v []int, sep string) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, sep)
}

// assemble is how every reader turns a file's tensors into a model: it
// checks that the names (have) are exactly spec's, then each tensor's
// shape (shapeOf), then the metadata's sizes, and builds the flat
// parameter vector in spec's layout, fill copying each tensor's values
// into its slice; every value must be finite.
func assemble(spec model.Spec, have []string, shapeOf func(name string) []int, meta Meta, fill func(t tensorShape, dst []float32) error) ([]float32, error) {
	want := layout(spec)
	if err := checkNames(have, spec, want); err != nil {
		return nil, err
	}
	for _, t := range want {
		if sh := shapeOf(t.name); !slices.Equal(sh, t.shape) {
			return nil, fmt.Errorf("%w: tensor %s has shape %v, but %s expects %v", ErrFormat, t.name, sh, spec, t.shape)
		}
	}
	if err := checkMetaSizes(meta, spec); err != nil {
		return nil, err
	}
	params := make([]float32, spec.NumParams())
	for _, t := range want {
		dst := params[t.off : t.off+t.size()]
		if err := fill(t, dst); err != nil {
			return nil, err
		}
		if err := checkFinite(t, dst); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrFormat, err)
		}
	}
	return params, nil
}
