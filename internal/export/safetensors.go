package export

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"fedgather/internal/model"
)

// MaxHeader is the largest safetensors JSON header accepted, in bytes (the
// reference implementation's limit).
const MaxHeader = 100 << 20

// DTypeF32 is the only safetensors dtype written and accepted: IEEE-754
// binary32, little-endian.
const DTypeF32 = "F32"

// metadataKey is the header entry holding string metadata.
const metadataKey = "__metadata__"

// WriteSafetensors writes params, the flat parameter vector of spec, to w
// as a safetensors file. The tensors are fc1.weight [out, in], fc1.bias
// [out], fc2.weight, … in that order, so the data section is exactly the
// flat vector in little-endian float32. The header carries meta's version
// and accuracy and spec's name and sizes (see the Key constants) and is
// padded with spaces so that the data starts at a multiple of 8 bytes.
// Non-finite parameters are refused.
func WriteSafetensors(w io.Writer, spec model.Spec, params []float32, meta Meta) error {
	if err := checkParams(spec, params); err != nil {
		return err
	}
	hdr, err := safetensorsHeader(spec, meta)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
	bw.Write(n[:])
	bw.Write(hdr)
	var b [4]byte
	for _, x := range params {
		binary.LittleEndian.PutUint32(b[:], math.Float32bits(x))
		bw.Write(b[:])
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export: write safetensors: %w", err)
	}
	return nil
}

// safetensorsHeader is the padded JSON header for spec: metadata first,
// then the tensors in parameter order.
func safetensorsHeader(spec model.Spec, meta Meta) ([]byte, error) {
	md, err := json.Marshal(meta.entries(spec)) // keys sorted
	if err != nil {
		return nil, fmt.Errorf("export: encode metadata: %w", err)
	}
	var h bytes.Buffer
	h.WriteString(`{"` + metadataKey + `":`)
	h.Write(md)
	for _, t := range layout(spec) {
		begin := 4 * t.off
		fmt.Fprintf(&h, `,%q:{"dtype":%q,"shape":[%s],"data_offsets":[%d,%d]}`,
			t.name, DTypeF32, joinInts(t.shape, ","), begin, begin+4*t.size())
	}
	h.WriteByte('}')
	for (8+h.Len())%8 != 0 {
		h.WriteByte(' ')
	}
	return h.Bytes(), nil
}

// Tensor is one entry of a safetensors header.
type Tensor struct {
	// Name is the tensor's key, such as "fc1.weight".
	Name string
	// DType is the element type; only "F32" passes DecodeSafetensors.
	DType string
	// Shape lists the dimensions, outermost first.
	Shape []int
	// Begin and End are the tensor's byte range within the data section
	// (data_offsets): the bytes [Begin, End) after the header.
	Begin, End int64
}

// Safetensors is a decoded, structurally valid safetensors file: every
// tensor is F32, its byte range matches its shape, and the ranges tile the
// data section exactly, without gaps or overlaps. Whether the tensors form
// a given model is checked by Params.
type Safetensors struct {
	// Meta is the header's metadata.
	Meta Meta
	// Tensors lists the tensors in data order.
	Tensors []Tensor
	data    []byte
	byName  map[string]int // index into Tensors
}

// tensorEntry is a header entry as JSON; nil fields were absent.
type tensorEntry struct {
	DType       *string
	Shape       *[]int64
	DataOffsets *[]int64
}

// DecodeSafetensors reads a safetensors file from r and checks its
// structure: the header length against MaxHeader and the bytes actually
// present, the header JSON (one object; no duplicate keys; string-valued
// "__metadata__"; each tensor with exactly dtype, shape and data_offsets),
// dtype F32 only, shapes against byte ranges, ranges in bounds, contiguous
// and non-overlapping, and no bytes after the last tensor. It reads r to
// its end. Errors wrap ErrFormat and say what was expected and what was
// found.
func DecodeSafetensors(r io.Reader) (*Safetensors, error) {
	var lenBuf [8]byte
	if n, err := io.ReadFull(r, lenBuf[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: truncated: %d bytes, but a safetensors file starts with an 8-byte header length", ErrFormat, n)
		}
		return nil, fmt.Errorf("export: read safetensors header length: %w", err)
	}
	if string(lenBuf[:6]) == "ARROW1" {
		return nil, fmt.Errorf("%w: this is an Arrow IPC file, not safetensors", ErrFormat)
	}
	hlen := binary.LittleEndian.Uint64(lenBuf[:])
	if hlen < 2 || hlen > MaxHeader {
		return nil, fmt.Errorf("%w: header length %d: expected 2 to %d bytes of JSON", ErrFormat, hlen, MaxHeader)
	}
	// ReadAll grows with the bytes actually present, so a lying length
	// cannot make us allocate it up front.
	hdr, err := io.ReadAll(io.LimitReader(r, int64(hlen)))
	if err != nil {
		return nil, fmt.Errorf("export: read safetensors header: %w", err)
	}
	if uint64(len(hdr)) < hlen {
		return nil, fmt.Errorf("%w: truncated header: the header length says %d bytes but only %d follow it", ErrFormat, hlen, len(hdr))
	}
	meta, tensors, err := parseHeader(hdr)
	if err != nil {
		return nil, err
	}
	total, err := checkRanges(tensors)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(r, total+1))
	if err != nil {
		return nil, fmt.Errorf("export: read safetensors data: %w", err)
	}
	if int64(len(data)) < total {
		for _, t := range tensors {
			if t.End > int64(len(data)) {
				return nil, fmt.Errorf("%w: truncated data: tensor %q has data_offsets [%d, %d] but the file holds only %d bytes of tensor data", ErrFormat, t.Name, t.Begin, t.End, len(data))
			}
		}
	}
	if int64(len(data)) > total {
		return nil, fmt.Errorf("%w: unexpected bytes after the last tensor: the header accounts for %d bytes of tensor data", ErrFormat, total)
	}
	byName := make(map[string]int, len(tensors))
	for i, t := range tensors {
		byName[t.Name] = i
	}
	return &Safetensors{Meta: meta, Tensors: tensors, data: data, byName: byName}, nil
}

// parseHeader decodes the JSON header strictly: one object, keys exact
// (case-sensitive) and not repeated at any level, nothing but space padding
// after it.
func parseHeader(hdr []byte) (Meta, []Tensor, error) {
	if hdr[0] != '{' {
		return Meta{}, nil, fmt.Errorf("%w: header: expected a JSON object, found %q", ErrFormat, clip(hdr, 16))
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	meta := Meta{Accuracy: math.NaN()}
	var tensors []Tensor
	err := walkObject(dec, func(key string) error {
		if key == metadataKey {
			e := map[string]string{}
			err := walkObject(dec, func(k string) error {
				var v *string
				if err := dec.Decode(&v); err != nil {
					return fmt.Errorf("value of %q: expected a string: %w", k, err)
				}
				if v == nil {
					return fmt.Errorf("value of %q: expected a string, found null", k)
				}
				e[k] = *v
				return nil
			})
			if err != nil {
				return fmt.Errorf("%q: %w", metadataKey, err)
			}
			meta, err = parseMeta(e)
			return err
		}
		var te tensorEntry
		err := walkObject(dec, func(k string) error {
			var err error
			switch k {
			case "dtype":
				te.DType = new(string)
				err = dec.Decode(te.DType)
			case "shape":
				te.Shape = new([]int64)
				err = dec.Decode(te.Shape)
			case "data_offsets":
				te.DataOffsets = new([]int64)
				err = dec.Decode(te.DataOffsets)
			default:
				return fmt.Errorf("unknown field %q (expected dtype, shape, data_offsets)", k)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
		t, err := te.tensor(key)
		if err != nil {
			return err
		}
		tensors = append(tensors, t)
		return nil
	})
	var syntax *json.SyntaxError
	switch {
	case err == nil:
	case errors.Is(err, ErrFormat):
		return Meta{}, nil, err
	case errors.As(err, &syntax):
		return Meta{}, nil, fmt.Errorf("%w: header: bad JSON at byte %d: %w", ErrFormat, syntax.Offset, err)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return Meta{}, nil, fmt.Errorf("%w: header: bad JSON: the header ends inside the object (%w)", ErrFormat, err)
	default:
		return Meta{}, nil, fmt.Errorf("%w: header: %w", ErrFormat, err)
	}
	rest := bytes.TrimLeft(hdr[dec.InputOffset():], " \t\r\n")
	if len(rest) != 0 {
		return Meta{}, nil, fmt.Errorf("%w: header: unexpected %q after the JSON object (only space padding may follow it)", ErrFormat, clip(rest, 16))
	}
	return meta, tensors, nil
}

// walkObject reads one JSON object from dec, calling value for each key
// with dec positioned at the key's value, which value must consume. A
// repeated key is an error.
func walkObject(dec *json.Decoder, value func(key string) error) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("expected a JSON object, found %v", tok)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("expected a key, found %v", tok)
		}
		if seen[key] {
			return fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		if err := value(key); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return err
	}
	return nil
}

// tensor checks one header entry on its own.
func (te tensorEntry) tensor(name string) (Tensor, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: tensor %q: %s", ErrFormat, name, fmt.Sprintf(format, a...))
	}
	switch {
	case te.DType == nil:
		return Tensor{}, bad("no dtype")
	case te.Shape == nil || *te.Shape == nil:
		return Tensor{}, bad("no shape")
	case te.DataOffsets == nil:
		return Tensor{}, bad("no data_offsets")
	}
	if *te.DType != DTypeF32 {
		return Tensor{}, bad("dtype %q; only %s (float32) is accepted", *te.DType, DTypeF32)
	}
	t := Tensor{Name: name, DType: *te.DType, Shape: make([]int, len(*te.Shape))}
	elems := int64(1)
	for i, d := range *te.Shape {
		if d < 0 {
			return Tensor{}, bad("shape %v has a negative dimension", *te.Shape)
		}
		if d > maxElements || (d > 0 && elems > maxElements/d) {
			return Tensor{}, bad("shape %v has more than %d elements", *te.Shape, maxElements)
		}
		elems *= d
		t.Shape[i] = int(d)
	}
	off := *te.DataOffsets
	if len(off) != 2 {
		return Tensor{}, bad("data_offsets has %d numbers; expected [begin, end]", len(off))
	}
	t.Begin, t.End = off[0], off[1]
	if t.Begin < 0 || t.End < t.Begin {
		return Tensor{}, bad("data_offsets [%d, %d]: expected 0 ≤ begin ≤ end", t.Begin, t.End)
	}
	if t.End-t.Begin != 4*elems {
		return Tensor{}, bad("data_offsets [%d, %d] span %d bytes, but shape %v of %s needs %d", t.Begin, t.End, t.End-t.Begin, t.Shape, DTypeF32, 4*elems)
	}
	return t, nil
}

// checkRanges sorts tensors by offset and checks that their byte ranges
// tile [0, total) with no gap or overlap; it returns total.
func checkRanges(ts []Tensor) (int64, error) {
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].Begin != ts[j].Begin {
			return ts[i].Begin < ts[j].Begin
		}
		if ts[i].End != ts[j].End {
			return ts[i].End < ts[j].End
		}
		return ts[i].Name < ts[j].Name
	})
	var end int64
	for i, t := range ts {
		switch {
		case t.Begin > end:
			return 0, fmt.Errorf("%w: gap in the data: bytes [%d, %d) belong to no tensor (next is %q at data_offsets [%d, %d])", ErrFormat, end, t.Begin, t.Name, t.Begin, t.End)
		case t.Begin < end:
			p := ts[i-1]
			return 0, fmt.Errorf("%w: tensors %q [%d, %d] and %q [%d, %d] overlap", ErrFormat, p.Name, p.Begin, p.End, t.Name, t.Begin, t.End)
		}
		end = t.End
		if end > 4*maxElements {
			return 0, fmt.Errorf("%w: tensor data runs to byte %d, more than the limit of %d float32 values", ErrFormat, end, maxElements)
		}
	}
	return end, nil
}

// Spec infers the model the file holds from its weight shapes:
// fc1.weight [h1, in], fc2.weight [h2, h1], … The name is the metadata's
// "model" when that describes the same layers, else "logreg" or
// "mlp:h1,h2,…". Use Params to check the whole file against it.
func (s *Safetensors) Spec() (model.Spec, error) {
	return inferSpec(s.shape, s.Meta.Model)
}

// Dims returns the model's input width (fc1.weight's columns) and class
// count (the length of the highest-numbered fcK.bias, or the rows of
// fcK.weight when that bias is missing), so that a named model ("2nn") can
// be instantiated for the file and checked with Params.
func (s *Safetensors) Dims() (inputs, classes int, err error) {
	sh, ok := s.shape("fc1.weight")
	if !ok || len(sh) != 2 {
		return 0, 0, fmt.Errorf("%w: no 2-D tensor fc1.weight; expected nn.Linear layers named fc1, fc2, … (the file holds %s)", ErrFormat, s.names())
	}
	inputs, classes = sh[1], sh[0]
	for k := 1; ; k++ {
		w, hasW := s.shape("fc" + strconv.Itoa(k) + ".weight")
		b, hasB := s.shape("fc" + strconv.Itoa(k) + ".bias")
		switch {
		case hasB && len(b) == 1:
			classes = b[0]
		case hasW && len(w) == 2:
			classes = w[0]
		case !hasW && !hasB:
			return inputs, classes, nil
		}
	}
}

// Params checks that the file holds exactly spec's tensors — names, shapes,
// finite values, and metadata sizes if present — and returns them as one
// flat parameter vector in spec's layout.
func (s *Safetensors) Params(spec model.Spec) ([]float32, error) {
	have := make([]string, len(s.Tensors))
	for i, t := range s.Tensors {
		have[i] = t.Name
	}
	shapeOf := func(name string) []int { sh, _ := s.shape(name); return sh }
	return assemble(spec, have, shapeOf, s.Meta, func(w tensorShape, dst []float32) error {
		t := s.Tensors[s.byName[w.name]]
		src := s.data[t.Begin:t.End]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
		return nil
	})
}

// shape looks up a tensor's shape by name.
func (s *Safetensors) shape(name string) ([]int, bool) {
	i, ok := s.byName[name]
	if !ok {
		return nil, false
	}
	return s.Tensors[i].Shape, true
}

// names lists the tensor names for messages, sorted and shortened.
func (s *Safetensors) names() string {
	if len(s.Tensors) == 0 {
		return "no tensors"
	}
	n := make([]string, len(s.Tensors))
	for i, t := range s.Tensors {
		n[i] = strconv.Quote(t.Name)
	}
	sort.Strings(n)
	if len(n) > 8 {
		n = append(n[:8], fmt.Sprintf("… (%d in all)", len(s.Tensors)))
	}
	return fmt.Sprint(n)
}

// ReadSafetensors reads a safetensors file holding exactly spec's tensors
// and returns the flat parameter vector and the file's metadata. See
// DecodeSafetensors and Safetensors.Params for what is checked.
func ReadSafetensors(r io.Reader, spec model.Spec) ([]float32, Meta, error) {
	s, err := DecodeSafetensors(r)
	if err != nil {
		return nil, Meta{}, err
	}
	p, err := s.Params(spec)
	if err != nil {
		return nil, Meta{}, err
	}
	return p, s.Meta, nil
}

// ReadSafetensorsAny reads a safetensors file holding some MLP, infers its
// Spec (see Safetensors.Spec) and returns it with the weights and metadata.
func ReadSafetensorsAny(r io.Reader) (model.Spec, []float32, Meta, error) {
	s, err := DecodeSafetensors(r)
	if err != nil {
		return model.Spec{}, nil, Meta{}, err
	}
	spec, err := s.Spec()
	if err != nil {
		return model.Spec{}, nil, Meta{}, err
	}
	p, err := s.Params(spec)
	if err != nil {
		return model.Spec{}, nil, Meta{}, err
	}
	return spec, p, s.Meta, nil
}

// clip returns at most n bytes of b, for messages.
func clip(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
