package export

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"fedgather/internal/model"
)

func mustSpec(t testing.TB, name string, in, classes int) model.Spec {
	t.Helper()
	s, err := model.Parse(name, in, classes)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func initParams(s model.Spec, seed uint64) []float32 {
	p := make([]float32, s.NumParams())
	s.Init(p, seed)
	return p
}

func writeST(t testing.TB, s model.Spec, p []float32, m Meta) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteSafetensors(&b, s, p, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sameBits(a, b []float32) bool {
	return len(a) == len(b) && slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

func TestSafetensorsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name        string
		in, classes int
	}{{"logreg", 5, 3}, {"mlp:4,3", 6, 2}, {"2nn", 784, 10}} {
		t.Run(tc.name, func(t *testing.T) {
			spec := mustSpec(t, tc.name, tc.in, tc.classes)
			p := initParams(spec, 3)
			b := writeST(t, spec, p, Meta{Version: 12, Accuracy: 0.9123})

			// The layout a generic safetensors reader sees.
			n := binary.LittleEndian.Uint64(b)
			if (8+n)%8 != 0 {
				t.Errorf("data starts at byte %d, not a multiple of 8", 8+n)
			}
			var hdr map[string]json.RawMessage
			if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
				t.Fatalf("header is not JSON: %v", err)
			}
			if len(hdr) != 1+2*len(spec.Layers()) {
				t.Errorf("header has %d entries, want metadata + %d tensors", len(hdr), 2*len(spec.Layers()))
			}
			for _, l := range spec.Layers() {
				var w, bias struct {
					DType   string  `json:"dtype"`
					Shape   []int   `json:"shape"`
					Offsets []int64 `json:"data_offsets"`
				}
				_ = json.Unmarshal(hdr[l.Name+".weight"], &w)
				_ = json.Unmarshal(hdr[l.Name+".bias"], &bias)
				if w.DType != "F32" || !slices.Equal(w.Shape, []int{l.Out, l.In}) || w.Offsets[0] != int64(4*l.WOff) {
					t.Errorf("%s.weight entry %+v; want F32 [%d %d] at %d", l.Name, w, l.Out, l.In, 4*l.WOff)
				}
				if bias.DType != "F32" || !slices.Equal(bias.Shape, []int{l.Out}) || bias.Offsets[0] != int64(4*l.BOff) {
					t.Errorf("%s.bias entry %+v; want F32 [%d] at %d", l.Name, bias, l.Out, 4*l.BOff)
				}
			}
			var md map[string]string
			_ = json.Unmarshal(hdr["__metadata__"], &md)
			want := map[string]string{"format": "pt", "producer": "fedgather", "model": spec.Name,
				"sizes": joinInts(spec.Sizes, ","), "version": "12", "accuracy": "0.9123"}
			if fmt.Sprint(md) != fmt.Sprint(want) {
				t.Errorf("metadata %v, want %v", md, want)
			}
			// The data section is the flat vector.
			data := b[8+n:]
			if len(data) != 4*len(p) {
				t.Fatalf("data section %d bytes, want %d", len(data), 4*len(p))
			}
			for i, x := range p {
				if binary.LittleEndian.Uint32(data[4*i:]) != math.Float32bits(x) {
					t.Fatalf("data value %d differs from parameter %d", i, i)
				}
			}

			got, meta, err := ReadSafetensors(bytes.NewReader(b), spec)
			if err != nil {
				t.Fatal(err)
			}
			if !sameBits(got, p) {
				t.Error("parameters differ after a round trip")
			}
			if meta.Version != 12 || meta.Accuracy != 0.9123 || meta.Model != spec.Name || !slices.Equal(meta.Sizes, spec.Sizes) {
				t.Errorf("meta %+v", meta)
			}
			if meta.Other["format"] != "pt" || meta.Other["producer"] != "fedgather" {
				t.Errorf("meta.Other %v", meta.Other)
			}

			inferred, got, _, err := ReadSafetensorsAny(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if !inferred.Equal(spec) || !sameBits(got, p) {
				t.Errorf("ReadSafetensorsAny inferred %s, want %s", inferred, spec)
			}
		})
	}
}

// TestInferWithoutMetadata reads a file as PyTorch's safetensors library
// writes it: no metadata, tensors sorted by name rather than in layer
// order, no padding.
func TestInferWithoutMetadata(t *testing.T) {
	spec := mustSpec(t, "mlp:3", 4, 2)
	p := initParams(spec, 1)
	// Data order: fc1.bias, fc1.weight, fc2.bias, fc2.weight.
	var data []float32
	for _, l := range spec.Layers() {
		data = append(data, p[l.BOff:l.BOff+l.Out]...)
		data = append(data, p[l.WOff:l.BOff]...)
	}
	hdr := `{"fc1.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},` +
		`"fc1.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[12,60]},` +
		`"fc2.bias":{"dtype":"F32","shape":[2],"data_offsets":[60,68]},` +
		`"fc2.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[68,92]}}`
	got, meta, err := ReadSafetensors(bytes.NewReader(file(hdr, floats(data...))), spec)
	if err != nil {
		t.Fatal(err)
	}
	if !sameBits(got, p) {
		t.Error("parameters differ")
	}
	if !math.IsNaN(meta.Accuracy) || meta.Model != "" || meta.Sizes != nil {
		t.Errorf("meta of a file without metadata: %+v", meta)
	}
	inferred, _, _, err := ReadSafetensorsAny(bytes.NewReader(file(hdr, floats(data...))))
	if err != nil || inferred.Name != "mlp:3" || !inferred.SameLayout(spec) {
		t.Errorf("inferred %v, %v; want mlp:3(4-3-2)", inferred, err)
	}
}

// file assembles a safetensors file from a header and a data section.
func file(hdr string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	return append(b, data...)
}

func floats(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// entry is one tensor header entry.
func entry(name, dtype, shape string, begin, end int) string {
	return fmt.Sprintf(`%q:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, name, dtype, shape, begin, end)
}

// TestCorruptSafetensors checks that every kind of damage or mismatch is
// refused with an error that names it.
func TestCorruptSafetensors(t *testing.T) {
	spec := mustSpec(t, "mlp:3", 4, 2) // fc1.weight [3,4], fc1.bias [3], fc2.weight [2,3], fc2.bias [2]: 92 bytes
	good := writeST(t, spec, initParams(spec, 2), Meta{Version: 1, Accuracy: 0.5})
	vals := make([]float32, 23)
	for i := range vals {
		vals[i] = float32(i) / 10
	}
	data := floats(vals...)
	std := []string{
		entry("fc1.weight", "F32", "[3,4]", 0, 48),
		entry("fc1.bias", "F32", "[3]", 48, 60),
		entry("fc2.weight", "F32", "[2,3]", 60, 84),
		entry("fc2.bias", "F32", "[2]", 84, 92),
	}
	hdr := func(entries ...string) string { return "{" + strings.Join(entries, ",") + "}" }
	with := func(i int, e string) string {
		es := slices.Clone(std)
		es[i] = e
		return hdr(es...)
	}
	n := binary.LittleEndian.Uint64(good)
	withNaN := slices.Clone(data)
	binary.LittleEndian.PutUint32(withNaN[4*5:], math.Float32bits(float32(math.NaN())))
	withInf := slices.Clone(data)
	binary.LittleEndian.PutUint32(withInf[4*21:], math.Float32bits(float32(math.Inf(1))))

	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty file", nil, "truncated: 0 bytes"},
		{"short length", good[:5], "truncated: 5 bytes"},
		{"truncated header", good[:8+n/2], fmt.Sprintf("truncated header: the header length says %d bytes but only %d follow", n, n/2)},
		{"header length beyond the file", file(hdr(std...), data)[:8], "truncated header"},
		{"header length over the limit", binary.LittleEndian.AppendUint64(nil, 1<<40), "header length 1099511627776"},
		{"zero header length", make([]byte, 8), "header length 0"},
		{"bad JSON", file(`{"fc1.weight":{"dtype":"F32",}}`, data), "header: bad JSON at byte 29"},
		{"missing colon", file(`{"fc1.weight":{"dtype" "F32"}}`, data), "header: bad JSON at byte"},
		{"JSON cut short", file(`{"fc1.weight":{"dtype":`, data), "header: bad JSON: the header ends inside the object"},
		{"not an object", file(`[1,2,3]`, data), "expected a JSON object"},
		{"garbage after the object", file(hdr(std...)+"xyz", data), `unexpected "xyz" after the JSON object`},
		{"duplicate key", file(hdr(append(slices.Clone(std), std[0])...), data), `key "fc1.weight" appears twice`},
		{"unknown field", file(with(1, `"fc1.bias":{"dtype":"F32","shape":[3],"data_offsets":[48,60],"extra":1}`), data), `tensor "fc1.bias": unknown field "extra"`},
		{"field in the wrong case", file(with(1, `"fc1.bias":{"DType":"F32","shape":[3],"data_offsets":[48,60]}`), data), `unknown field "DType"`},
		{"no dtype", file(with(1, `"fc1.bias":{"shape":[3],"data_offsets":[48,60]}`), data), `tensor "fc1.bias": no dtype`},
		{"null shape", file(with(1, `"fc1.bias":{"dtype":"F32","shape":null,"data_offsets":[48,60]}`), data), `tensor "fc1.bias": no shape`},
		{"fractional shape", file(with(1, entry("fc1.bias", "F32", "[1.5]", 48, 60)), data), `tensor "fc1.bias": shape`},
		{"metadata not strings", file(hdr(append([]string{`"__metadata__":{"version":3}`}, std...)...), data), `"__metadata__": value of "version": expected a string`},
		{"metadata null", file(hdr(append([]string{`"__metadata__":null`}, std...)...), data), `expected a JSON object, found <nil>`},
		{"metadata bad version", file(hdr(append([]string{`"__metadata__":{"version":"v3"}`}, std...)...), data), `metadata "version" = "v3": expected a non-negative integer`},
		{"metadata bad accuracy", file(hdr(append([]string{`"__metadata__":{"accuracy":"1.5"}`}, std...)...), data), `metadata "accuracy" = "1.5"`},
		{"metadata sizes disagree", file(hdr(append([]string{`"__metadata__":{"sizes":"4,5,2"}`}, std...)...), data), `metadata "sizes" says 4-5-2 but the tensors are 4-3-2`},
		{"wrong dtype F16", file(with(0, entry("fc1.weight", "F16", "[3,4]", 0, 24)), data), `tensor "fc1.weight": dtype "F16"; only F32 (float32) is accepted`},
		{"wrong dtype F64", file(with(3, entry("fc2.bias", "F64", "[2]", 84, 100)), data), `tensor "fc2.bias": dtype "F64"; only F32`},
		{"offsets span the wrong size", file(with(1, entry("fc1.bias", "F32", "[3]", 48, 64)), data), `tensor "fc1.bias": data_offsets [48, 64] span 16 bytes, but shape [3] of F32 needs 12`},
		{"offsets reversed", file(with(1, entry("fc1.bias", "F32", "[3]", 60, 48)), data), `data_offsets [60, 48]: expected 0 ≤ begin ≤ end`},
		{"negative offset", file(with(0, entry("fc1.weight", "F32", "[3,4]", -4, 44)), data), `expected 0 ≤ begin ≤ end`},
		{"three offsets", file(with(1, `"fc1.bias":{"dtype":"F32","shape":[3],"data_offsets":[48,60,72]}`), data), `data_offsets has 3 numbers`},
		{"overlapping tensors", file(with(1, entry("fc1.bias", "F32", "[3]", 40, 52)), data), `tensors "fc1.weight" [0, 48] and "fc1.bias" [40, 52] overlap`},
		{"gap between tensors", file(hdr(std[0], entry("fc1.bias", "F32", "[3]", 52, 64), entry("fc2.weight", "F32", "[2,3]", 64, 88), entry("fc2.bias", "F32", "[2]", 88, 96)), append(slices.Clone(data), 0, 0, 0, 0)), `gap in the data: bytes [48, 52) belong to no tensor`},
		{"offsets beyond the file", file(hdr(std...), data[:80]), `truncated data: tensor "fc2.weight" has data_offsets [60, 84] but the file holds only 80 bytes`},
		{"huge offsets", file(hdr(std[0], std[1], std[2], entry("fc2.bias", "F32", "[2]", 1<<40, 1<<40+8)), data), `gap in the data`},
		{"huge shape", file(hdr(entry("fc1.weight", "F32", "[1099511627776,1099511627776]", 0, 48)), data), `more than 1073741824 elements`},
		{"bytes after the last tensor", file(hdr(std...), append(slices.Clone(data), 1)), `unexpected bytes after the last tensor: the header accounts for 92 bytes`},
		{"wrong tensor name", file(with(0, entry("layer1.weight", "F32", "[3,4]", 0, 48)), data), `missing tensor fc1.weight, unexpected tensor "layer1.weight"`},
		{"missing tensor", file(hdr(std[0], std[1], std[2]), data[:84]), `missing tensor fc2.bias (mlp:3(4-3-2) has tensors fc1.weight, fc1.bias, fc2.weight, fc2.bias)`},
		{"extra tensor", file(hdr(append(slices.Clone(std), entry("fc3.weight", "F32", "[1,2]", 92, 100))...), append(slices.Clone(data), floats(1, 2)...)), `unexpected tensor "fc3.weight"`},
		{"transposed weight", file(with(0, entry("fc1.weight", "F32", "[4,3]", 0, 48)), data), `tensor fc1.weight has shape [4 3], but mlp:3(4-3-2) expects [3 4]`},
		{"flattened weight", file(with(2, entry("fc2.weight", "F32", "[6]", 60, 84)), data), `tensor fc2.weight has shape [6], but mlp:3(4-3-2) expects [2 3]`},
		{"NaN", file(hdr(std...), withNaN), `tensor fc1.weight holds NaN at [1, 1]`},
		{"infinity", file(hdr(std...), withInf), `tensor fc2.bias holds +Inf at index 0`},
		{"another model", writeST(t, mustSpec(t, "logreg", 4, 2), initParams(mustSpec(t, "logreg", 4, 2), 1), Meta{}), `missing tensor fc2.weight, missing tensor fc2.bias (mlp:3(4-3-2) has`},
	}
	// The base case is valid, so each failure is the one the case introduces.
	if _, _, err := ReadSafetensors(bytes.NewReader(file(hdr(std...), data)), spec); err != nil {
		t.Fatalf("the undamaged hand-made file: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ReadSafetensors(bytes.NewReader(tc.in), spec)
			if err == nil {
				t.Fatalf("no error; want one containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %q does not wrap ErrFormat", err)
			}
		})
	}
}

func TestInferErrors(t *testing.T) {
	for _, tc := range []struct {
		name, hdr string
		data      []byte
		want      string
	}{
		{"no fc1", `{"weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}`, floats(1, 2, 3, 4), "no tensor fc1.weight"},
		{"1-D weight", `{"fc1.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, floats(1, 2, 3, 4), "an nn.Linear weight is 2-D"},
		{"broken chain", `{"fc1.weight":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"fc2.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}}`,
			floats(1, 2, 3, 4, 5, 6, 7, 8), "tensor fc2.weight has shape [2 3]: 3 inputs, but fc1 has 2 outputs"},
		{"one class", `{"fc1.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"fc1.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, floats(1, 2, 3), "classes must be at least 2"},
		{"missing bias", `{"fc1.weight":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}`, floats(1, 2), "missing tensor fc1.bias"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := ReadSafetensorsAny(bytes.NewReader(file(tc.hdr, tc.data)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDims(t *testing.T) {
	spec := mustSpec(t, "2nn", 784, 10)
	good := writeST(t, spec, initParams(spec, 1), Meta{})
	// A transposed last weight still gives the classes, from fc3.bias.
	transposed := bytes.Replace(good, []byte(`"shape":[10,200]`), []byte(`"shape":[200,10]`), 1)
	for _, b := range [][]byte{good, transposed} {
		s, err := DecodeSafetensors(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		in, classes, err := s.Dims()
		if err != nil || in != 784 || classes != 10 {
			t.Errorf("Dims = %d, %d, %v; want 784, 10", in, classes, err)
		}
	}
	s, _ := DecodeSafetensors(bytes.NewReader(transposed))
	if _, err := s.Params(spec); err == nil || !strings.Contains(err.Error(), "tensor fc3.weight has shape [200 10], but 2nn(784-200-200-10) expects [10 200]") {
		t.Errorf("Params: %v", err)
	}
	var arrow bytes.Buffer
	if err := WriteArrow(&arrow, spec, initParams(spec, 1), Meta{}); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeSafetensors(&arrow); err == nil || !strings.Contains(err.Error(), "this is an Arrow IPC file, not safetensors") {
		t.Errorf("an Arrow file: %v", err)
	}
}

func TestWriteRefuses(t *testing.T) {
	spec := mustSpec(t, "logreg", 3, 2)
	p := initParams(spec, 1)
	if err := WriteSafetensors(&bytes.Buffer{}, spec, p[1:], Meta{}); err == nil || !strings.Contains(err.Error(), "7 parameters given, logreg(3-2) has 8") {
		t.Errorf("short vector: %v", err)
	}
	p[4] = float32(math.Inf(-1))
	if err := WriteSafetensors(&bytes.Buffer{}, spec, p, Meta{}); err == nil || !strings.Contains(err.Error(), "refusing to write: tensor fc1.weight holds -Inf at [1, 1]") {
		t.Errorf("infinite value: %v", err)
	}
	if err := WriteArrow(&bytes.Buffer{}, spec, p, Meta{}); err == nil || !strings.Contains(err.Error(), "-Inf") {
		t.Errorf("arrow, infinite value: %v", err)
	}
}

// FuzzReadSafetensors feeds arbitrary bytes to the reader: it must never
// panic or allocate without bound, and whatever it accepts must round-trip
// through the writer unchanged.
func FuzzReadSafetensors(f *testing.F) {
	spec := mustSpec(f, "mlp:3", 4, 2)
	good := writeST(f, spec, initParams(spec, 1), Meta{Version: 3, Accuracy: 0.25})
	f.Add(good)
	f.Add(good[:40])
	f.Add(writeST(f, mustSpec(f, "logreg", 2, 2), []float32{1, 2, 3, 4, 5, 6}, Meta{}))
	f.Add(file(`{"fc1.weight":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, floats(1, 2, 3, 4)))
	f.Add(file(`{"__metadata__":{"a":"b"},"x":{"dtype":"F16","shape":[],"data_offsets":[0,2]}}`, []byte{0, 0}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSafetensors(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %q does not wrap ErrFormat", err)
			}
			return
		}
		var total int64
		for _, tn := range s.Tensors {
			total += tn.End - tn.Begin
		}
		if total != int64(len(s.data)) {
			t.Fatalf("accepted tensors cover %d bytes of a %d-byte data section", total, len(s.data))
		}
		// Against a fixed model: accepted or refused, never a panic.
		if p, err := s.Params(spec); err == nil && len(p) != spec.NumParams() {
			t.Fatalf("Params returned %d values for %s", len(p), spec)
		}
		inferred, err := s.Spec()
		if err != nil {
			return
		}
		p, err := s.Params(inferred)
		if err != nil {
			return
		}
		meta := s.Meta
		meta.Version = max(meta.Version, 0)
		if meta.Accuracy != meta.Accuracy {
			meta.Accuracy = 0
		}
		again, meta2, err := ReadSafetensors(bytes.NewReader(writeST(t, inferred, p, meta)), inferred)
		if err != nil {
			t.Fatalf("re-reading a rewritten file: %v", err)
		}
		if !sameBits(again, p) || meta2.Version != meta.Version {
			t.Fatalf("round trip changed the model")
		}
	})
}

// TestScalarAndEmptyTensors: a scalar (shape []) takes 4 bytes and an
// empty tensor none; both are structurally valid.
func TestScalarAndEmptyTensors(t *testing.T) {
	b := file(`{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}}`, floats(1))
	s, err := DecodeSafetensors(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Tensors) != 2 || len(s.Tensors[1].Shape) != 0 && len(s.Tensors[0].Shape) != 0 {
		t.Errorf("tensors %+v", s.Tensors)
	}
	if _, err := s.Spec(); err == nil || !strings.Contains(err.Error(), `no tensor fc1.weight`) {
		t.Errorf("Spec: %v", err)
	}
}
