package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	payload := Float32Bytes([]float32{1, -2.5, 3e-7})
	b, err := Encode(TypeUpdate, Update{Task: 9, Round: 2, Samples: 600, Loss: 0.25}, payload)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	var u Update
	if err := f.Parse(&u); err != nil {
		t.Fatal(err)
	}
	if f.Type != TypeUpdate || u.Task != 9 || u.Samples != 600 || !bytes.Equal(f.Payload, payload) {
		t.Fatalf("round trip gave %v %+v", f.Type, u)
	}
	got := make([]float32, 3)
	if err := ReadFloat32s(got, f.Payload); err != nil || got[1] != -2.5 {
		t.Fatalf("tensor %v, %v", got, err)
	}
	var w bytes.Buffer
	if err := Write(&w, TypeUpdate, Update{Task: 9, Round: 2, Samples: 600, Loss: 0.25}, payload); err != nil || !bytes.Equal(w.Bytes(), b) {
		t.Fatalf("Write and Encode differ: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := Encode(TypePull, Pull{}, nil)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "shorter than the 6-byte prefix"},
		{"version", append([]byte{2}, good[1:]...), "frame says version 2"},
		{"type 0", append([]byte{1, 0}, good[2:]...), "unknown message type 0"},
		{"type 10", append([]byte{1, 10}, good[2:]...), "unknown message type 10"},
		{"huge header", []byte{1, 3, 0xff, 0xff, 0xff, 0xff}, "exceeds the limit"},
		{"header overrun", []byte{1, 3, 9, 0, 0, 0, '{', '}'}, "exceeds the 2 bytes left"},
	} {
		_, err := Decode(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := Decode(append([]byte{2}, good[1:]...)); !errors.Is(err, ErrVersion) {
		t.Errorf("version error %v does not wrap ErrVersion", err)
	}
	f, _ := Decode(good)
	var h Hello
	bad, _ := Encode(TypeHello, map[string]any{"name": 3}, nil)
	f2, _ := Decode(bad)
	if err := f2.Parse(&h); err == nil {
		t.Error("hello with a numeric name parsed")
	}
	if err := f.Parse(&Pull{}); err != nil {
		t.Errorf("pull: %v", err)
	}
	trailing := append(append([]byte{}, good[:2]...), 4, 0, 0, 0, '{', '}', '{', '}')
	f3, err := Decode(trailing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f3.Parse(&Pull{}); err == nil || !strings.Contains(err.Error(), "trailing data") {
		t.Errorf("trailing JSON: %v", err)
	}
}

func TestReadFloat32sRejectsBadTensors(t *testing.T) {
	dst := make([]float32, 2)
	if err := ReadFloat32s(dst, make([]byte, 7)); err == nil || !strings.Contains(err.Error(), "7 bytes, want 8") {
		t.Errorf("short payload: %v", err)
	}
	for _, x := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
		if err := ReadFloat32s(dst, Float32Bytes([]float32{0, x})); err == nil || !strings.Contains(err.Error(), "tensor value 1") {
			t.Errorf("%v: %v", x, err)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the frame decoder and the strict
// header parser: they must return errors, never panic.
func FuzzDecode(f *testing.F) {
	for _, seed := range []struct {
		t Type
		h any
	}{{TypeHello, Hello{Name: "a", Shards: []string{"x"}}}, {TypeTask, Task{ID: 1, Mode: "fedavg"}}, {TypeUpdate, Update{Task: 1}}, {TypeError, Error{Code: "x"}}} {
		b, _ := Encode(seed.t, seed.h, []byte{0, 0, 128, 63})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		// The streaming reader, with a buffer too small for most headers,
		// sees the same frame head or the same fault.
		h, herr := ReadHead(bytes.NewReader(b), make([]byte, 0, 8))
		if fmt.Sprint(err) != fmt.Sprint(herr) || (err == nil && (h.Type != fr.Type || !bytes.Equal(h.Header, fr.Header))) {
			t.Fatalf("frame %q: Decode gave %v, %q, %v; ReadHead gave %v, %q, %v", b, fr.Type, fr.Header, err, h.Type, h.Header, herr)
		}
		if err != nil {
			return
		}
		for _, v := range []any{&Hello{}, &Welcome{}, &Model{}, &Shard{}, &Task{}, &Update{}, &Done{}, &Error{}} {
			_ = fr.Parse(v)
		}
		dst := make([]float32, len(fr.Payload)/4)
		_ = ReadFloat32s(dst, fr.Payload)
	})
}

// TestReadHeadMatchesDecode checks the streaming reader against Decode on
// good and bad frames.
func TestReadHeadMatchesDecode(t *testing.T) {
	good, _ := Encode(TypeUpdate, Update{Task: 3}, Float32Bytes([]float32{1, 2}))
	for _, b := range [][]byte{good, good[:3], append([]byte{2}, good[1:]...), {1, 42, 0, 0, 0, 0}, {1, 3, 9, 0, 0, 0, '{', '}'}} {
		f1, err1 := Decode(b)
		r := bytes.NewReader(b)
		f2, err2 := ReadHead(r, nil)
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("frame %v: Decode %v, ReadHead %v", b, err1, err2)
		}
		if err1 != nil {
			continue
		}
		if f1.Type != f2.Type || !bytes.Equal(f1.Header, f2.Header) {
			t.Fatalf("frame %v: Decode %v %s, ReadHead %v %s", b, f1.Type, f1.Header, f2.Type, f2.Header)
		}
		dst := make([]float32, 2)
		if n, err := ReadTensor(r, dst); err != nil || n != 8 || dst[1] != 2 {
			t.Fatalf("ReadTensor: %d %v %v", n, err, dst)
		}
	}
	// Wrong tensor sizes are SizeErrors, and an empty payload is (0, nil).
	for _, tc := range []struct {
		payload []byte
		want    string
	}{{make([]byte, 4), "4 bytes, want 8"}, {make([]byte, 12), "12 bytes, want 8"}} {
		_, err := ReadTensor(bytes.NewReader(tc.payload), make([]float32, 2))
		var se *SizeError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("payload of %d bytes: %v", len(tc.payload), err)
		}
	}
	if n, err := ReadTensor(bytes.NewReader(nil), make([]float32, 2)); n != 0 || err != nil {
		t.Errorf("empty payload: %d %v", n, err)
	}
	if err := CheckFinite([]float32{1, 2, float32(math.Inf(1))}); err == nil || !strings.Contains(err.Error(), "tensor value 2 is +Inf") {
		t.Errorf("CheckFinite: %v", err)
	}
}

func TestCheckFinite(t *testing.T) {
	bads := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.Float32frombits(0x7f800001), math.Float32frombits(0xffc00000)}
	goods := []float32{0, float32(math.Copysign(0, -1)), math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, 1, -3.5e-20}
	buf := make([]float32, 103)
	for i := range buf {
		buf[i] = goods[i%len(goods)]
	}
	// Every offset (aligned to 8 bytes or not), every length up to 100 (so
	// with AVX2, none, one or more blocks of 32 and every tail) and every
	// position of one bad value.
	for off := 0; off < 3; off++ {
		for n := 0; n <= 100; n++ {
			v := buf[off : off+n]
			if err := CheckFinite(v); err != nil {
				t.Fatalf("offset %d length %d, all finite: %v", off, n, err)
			}
			for p := 0; p < n; p++ {
				for _, b := range bads {
					keep := v[p]
					v[p] = b
					err := CheckFinite(v)
					v[p] = keep
					want := fmt.Sprintf("tensor value %d is", p)
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("offset %d length %d, %v at %d: got %v, want an error naming value %d", off, n, b, p, err, p)
					}
				}
			}
		}
	}
}

// TestAllFiniteKernel compares allFinite (AVX2 on amd64) with allFiniteGo
// on long random tensors with a bad value, or none, anywhere.
func TestAllFiniteKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	bads := []uint32{0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff}
	for trial := range 300 {
		v := make([]float32, r.IntN(2000))
		for i := range v {
			v[i] = math.Float32frombits(r.Uint32() & 0xbf7fffff) // exponent never all ones
		}
		if trial%3 > 0 && len(v) > 0 {
			v[r.IntN(len(v))] = math.Float32frombits(bads[r.IntN(len(bads))])
		}
		if got, want := allFinite(v), allFiniteGo(v); got != want || want != (trial%3 == 0 || len(v) == 0) {
			t.Fatalf("trial %d, %d values: allFinite %v, allFiniteGo %v", trial, len(v), got, want)
		}
	}
}

func BenchmarkCheckFinite(b *testing.B) {
	v := make([]float32, 199210)
	for i := range v {
		v[i] = float32(i%101) * 1e-3
	}
	b.SetBytes(int64(4 * len(v)))
	for b.Loop() {
		if err := CheckFinite(v); err != nil {
			b.Fatal(err)
		}
	}
}

// ReadFiniteTensor reads what ReadTensor reads, however the connection
// splits the payload, and reports the first bad value by its index even
// when it straddles two reads.
func TestReadFiniteTensor(t *testing.T) {
	vals := make([]float32, 1000)
	for i := range vals {
		vals[i] = float32(i) - 500.25
	}
	payload := append([]byte(nil), Float32Bytes(vals)...)
	readers := map[string]func([]byte) io.Reader{
		"whole":    func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"halves":   func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"data+EOF": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
	}
	for name, mk := range readers {
		dst := make([]float32, len(vals))
		if n, err := ReadFiniteTensor(mk(payload), dst); err != nil || n != len(payload) || !slices.Equal(dst, vals) {
			t.Fatalf("%s: %d %v", name, n, err)
		}
		for _, at := range []int{0, 1, 511, 998, 999} {
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
				b := slices.Clone(payload)
				binary.LittleEndian.PutUint32(b[4*at:], math.Float32bits(bad))
				_, err := ReadFiniteTensor(mk(b), make([]float32, len(vals)))
				if want := fmt.Sprintf("tensor value %d is %v", at, bad); err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("%s, %v at %d: %v, want %q", name, bad, at, err, want)
				}
			}
		}
		for _, size := range []int{4, len(payload) - 1, len(payload) + 4} {
			b := make([]byte, size)
			_, err1 := ReadTensor(mk(b), make([]float32, len(vals)))
			_, err2 := ReadFiniteTensor(mk(b), make([]float32, len(vals)))
			var se *SizeError
			if !errors.As(err2, &se) || err1.Error() != err2.Error() {
				t.Fatalf("%s, %d bytes: ReadTensor %v, ReadFiniteTensor %v", name, size, err1, err2)
			}
		}
		// ReadTensor takes an empty payload for a frame without a tensor;
		// ReadFiniteTensor wants the tensor.
		var se *SizeError
		if n, err := ReadFiniteTensor(mk(nil), make([]float32, 2)); n != 0 || !errors.As(err, &se) || se.Got != 0 {
			t.Fatalf("%s, empty payload: %d %v, want a SizeError", name, n, err)
		}
	}
}

// FuzzReadFiniteTensor checks the streaming check against reading the
// whole payload and checking it afterwards, for any payload, tensor size
// and way the connection splits it.
func FuzzReadFiniteTensor(f *testing.F) {
	f.Add(Float32Bytes([]float32{1, 2, 3}), uint8(3), uint8(5))
	f.Add([]byte{0, 0, 0x80, 0x7f, 1}, uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, n, chunk uint8) {
		want := make([]float32, n)
		_, err1 := ReadTensor(bytes.NewReader(b), want)
		if err1 == nil && len(b) == 0 && n > 0 {
			// ReadTensor's frame without a tensor; ReadFiniteTensor
			// wants one.
			err1 = &SizeError{Got: 0, Want: 4 * int64(n)}
		}
		if err1 == nil {
			err1 = CheckFinite(want)
		}
		got := make([]float32, n)
		r := &chunkReader{b: b, k: int(chunk%16) + 1}
		_, err2 := ReadFiniteTensor(r, got)
		// A payload of the wrong size may hold a bad value before the end;
		// the streaming check reports whichever it meets first.
		var se *SizeError
		sizeFirst := errors.As(err1, &se) && err2 != nil && strings.HasPrefix(err2.Error(), "tensor value ")
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error() && !sizeFirst) {
			t.Fatalf("ReadTensor+CheckFinite: %v; ReadFiniteTensor: %v", err1, err2)
		}
		if err1 == nil && !slices.Equal(Float32Bytes(got), Float32Bytes(want)) {
			t.Fatalf("values differ: %v vs %v", got, want)
		}
	})
}

// chunkReader returns at most k bytes per Read.
type chunkReader struct {
	b []byte
	k int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.k)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// headerCases are headers for comparing a reused HeaderDecoder with
// Frame.Parse, which uses a new one for each header:
// good ones, and ones that leave a json.Decoder with an error or with
// bytes it has not consumed.
var headerCases = []string{
	`{"task":1,"round":2,"version":3,"client":4,"samples":600,"loss":0.5,"seconds":0.01}`,
	`{"task":7}`,
	`  {"task":8}  `,
	`{"task":9} {"task":10}`,
	`{"task":11}`,
	`{"task":`,
	`{"task":12}`,
	`{"task":13,"nope":1}`,
	`{"task":"x"}`,
	`{"task":14}x`,
	``,
	`[]`,
	`{"correct":2}`,
	`null`,
	`{"task":23}`,
	`{"task":15}}`,
	`{"task":16}`,
	`{"task":17} ]`,
	`{"task":18}`,
	// The decoder stops reading at the end of the value: white space
	// after it may stay unread, past its first 512-byte buffer.
	`{}` + strings.Repeat(" ", 600),
	`{"task":19}`,
	`{"task":20,"loss":` + strings.Repeat("0", 488) + `1}` + "\n",
	`{}`,
	// A header larger than keepHeaderBuffer, then a small one.
	`{"task":21,"loss":` + strings.Repeat("0", 5000) + `2}  `,
	`{"task":22}`,
}

// TestHeaderDecoderMatchesParse runs one HeaderDecoder through every
// header in turn and checks each result, value and error, against
// Frame.Parse's.
func TestHeaderDecoderMatchesParse(t *testing.T) {
	for _, h := range []string{`{"task":15}}`, `{"task":17} ]`, `{"task":9} {"task":10}`} {
		var u Update
		if err := (Frame{Type: TypeUpdate, Header: []byte(h)}).Parse(&u); err == nil || !strings.Contains(err.Error(), "trailing data") {
			t.Errorf("header %q: Parse gave %v, want trailing data", h, err)
		}
	}
	for _, h := range []string{``, ` `, `null`, ` null `, `[]`, `7`, `"x"`} {
		var u Update
		if err := (Frame{Type: TypeUpdate, Header: []byte(h)}).Parse(&u); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
			t.Errorf("header %q: Parse gave %v, want not a JSON object", h, err)
		}
	}
	var d HeaderDecoder
	for _, h := range headerCases {
		f := Frame{Type: TypeUpdate, Header: []byte(h)}
		var want, got Update
		errWant := f.Parse(&want)
		errGot := d.Parse(f, &got)
		if fmt.Sprint(errWant) != fmt.Sprint(errGot) || want != got {
			t.Errorf("header %q: Parse gave %+v, %v; HeaderDecoder gave %+v, %v", h, want, errWant, got, errGot)
		}
	}
}

// TestHeaderDecoderAllocatesNothing: once warmed up, parsing an update's
// header into a reused Update allocates nothing (the hub reads two headers
// per task).
func TestHeaderDecoderAllocatesNothing(t *testing.T) {
	p, _ := Prefix(TypeUpdate, Update{Task: 123456, Round: 17, Version: 17, Client: 512, Samples: 600, Loss: 0.2345, Seconds: 0.0123})
	f := Frame{Type: TypeUpdate, Header: p[PrefixLen:]}
	var d HeaderDecoder
	var u Update
	allocs := testing.AllocsPerRun(100, func() {
		u = Update{}
		if err := d.Parse(f, &u); err != nil || u.Task != 123456 {
			t.Fatalf("parse: %v, %+v", err, u)
		}
	})
	if allocs != 0 {
		t.Errorf("HeaderDecoder.Parse allocates %v times per header, want 0", allocs)
	}
}

// FuzzHeaderDecoder checks that a HeaderDecoder that has just parsed one
// header parses the next exactly as Frame.Parse does.
func FuzzHeaderDecoder(f *testing.F) {
	for i := range headerCases {
		f.Add([]byte(headerCases[i]), []byte(headerCases[(i+1)%len(headerCases)]))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var d HeaderDecoder
		for _, h := range [][]byte{a, b} {
			fr := Frame{Type: TypeUpdate, Header: h}
			var want, got Update
			errWant := fr.Parse(&want)
			errGot := d.Parse(fr, &got)
			if fmt.Sprint(errWant) != fmt.Sprint(errGot) || want != got {
				t.Fatalf("header %q after %q: Parse gave %+v, %v; HeaderDecoder gave %+v, %v", h, a, want, errWant, got, errGot)
			}
		}
	})
}

// BenchmarkParseHeader parses an update's header with Frame.Parse and with
// a reused HeaderDecoder.
func BenchmarkParseHeader(b *testing.B) {
	p, _ := Prefix(TypeUpdate, Update{Task: 123456, Round: 17, Version: 17, Client: 512, Samples: 600, Loss: 0.2345, Seconds: 0.0123})
	f := Frame{Type: TypeUpdate, Header: p[PrefixLen:]}
	b.Run("Parse", func(b *testing.B) {
		b.ReportAllocs()
		var u Update
		for b.Loop() {
			u = Update{}
			if err := f.Parse(&u); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("HeaderDecoder", func(b *testing.B) {
		b.ReportAllocs()
		var d HeaderDecoder
		var u Update
		for b.Loop() {
			u = Update{}
			if err := d.Parse(f, &u); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestHeaderEncoder checks that AppendPrefix writes what json.Marshal
// would, after whatever the buffer already holds.
func TestHeaderEncoder(t *testing.T) {
	headers := []struct {
		t Type
		h any
	}{
		{TypeTask, &Task{ID: 1 << 40, Round: 3, Version: 3, Client: 99, Shard: "ab12", Rows: 600, Mode: "fedavg", Epochs: 5, Batch: 10, LR: 0.1, Seed: 1<<64 - 1}},
		{TypeError, Error{Code: "update", Message: `NaN at <index> 3 & "quoted"`, Task: 7}},
		{TypeHello, Hello{Name: "héllo", Token: "t", Shards: []string{"a", "b"}}},
		{TypeDone, map[string]int{"rounds": 2}},
	}
	var e HeaderEncoder
	for _, c := range headers {
		h, err := json.Marshal(c.h)
		if err != nil {
			t.Fatal(err)
		}
		want := append([]byte{'x', Version, byte(c.t), 0, 0, 0, 0}, h...)
		binary.LittleEndian.PutUint32(want[3:7], uint32(len(h)))
		got, err := e.AppendPrefix([]byte{'x'}, c.t, c.h)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("AppendPrefix(%T) = %q, %v; want %q", c.h, got, err, want)
		}
	}

	big := Error{Message: strings.Repeat("a", MaxHeader)}
	if got, err := e.AppendPrefix([]byte("keep"), TypeError, big); err == nil || string(got) != "keep" {
		t.Errorf("a header over MaxHeader gave %d bytes, %v; want an error and the buffer as it was", len(got), err)
	}

}

// TestHeaderEncoderAllocatesNothing checks that encoding into a reused
// buffer allocates nothing. scripts/test also runs it without -race.
func TestHeaderEncoderAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("json.Encoder's pooled state is dropped at random under -race")
	}
	var e HeaderEncoder
	task := &Task{ID: 1 << 40, Round: 3, Version: 3, Client: 99, Shard: "ab12", Rows: 600, Mode: "fedavg", Epochs: 5, Batch: 10, LR: 0.1, Seed: 1<<64 - 1}
	buf := make([]byte, 0, 512)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if buf, err = e.AppendPrefix(buf[:0], TypeTask, task); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("AppendPrefix into a reused buffer allocates %v times per header, want 0", allocs)
	}
}

// TestReadHeadAllocatesNothing checks that reading a frame's head into a
// buffer with room, and its tensor into a slice of the right size,
// allocates nothing: the hub does both for every update it gathers.
func TestReadHeadAllocatesNothing(t *testing.T) {
	p, err := Prefix(TypeUpdate, Update{Task: 7, Round: 1, Version: 1, Client: 3, Samples: 600, Loss: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	tensor := make([]float32, 1000)
	frame := append(p, Float32Bytes(tensor)...)
	var r bytes.Reader
	buf := make([]byte, 0, 512)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(frame)
		f, err := ReadHead(&r, buf)
		if err != nil || f.Type != TypeUpdate {
			t.Fatalf("ReadHead: %v, %v", f.Type, err)
		}
		if n, err := ReadTensor(&r, tensor); err != nil || n != 4*len(tensor) {
			t.Fatalf("ReadTensor: %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("ReadHead and ReadTensor allocate %v times per frame, want 0", allocs)
	}
}
