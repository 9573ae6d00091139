package data

import (
	"bytes"
	"encoding/binary"
	"math"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/klauspost/compress/zstd"
)

// mnistShard returns the first n MNIST training rows as a dataset.
func mnistShard(t testing.TB, n int) *Dataset {
	t.Helper()
	train, _ := mnist(t)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return train.Subset(idx)
}

// bitEqual reports whether a and b hold bit-identical data.
func bitEqual(a, b *Dataset) bool {
	if a.Dim != b.Dim || a.Classes != b.Classes || len(a.X) != len(b.X) || !slices.Equal(a.Y, b.Y) {
		return false
	}
	for i := range a.X {
		if math.Float32bits(a.X[i]) != math.Float32bits(b.X[i]) {
			return false
		}
	}
	return true
}

func TestShardRoundTrip(t *testing.T) {
	train, _ := mnist(t)
	parts, err := PartitionPathological(train.Y, 100, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		d        *Dataset
		batchRow int // rows per record batch; 0 for EncodeShard's choice
		batches  int
	}{
		{"pathological client of 600", train.Subset(parts[0]), 0, 1},
		{"first 600", mnistShard(t, 600), 0, 1},
		{"6000 rows", mnistShard(t, 6000), 0, 2}, // 16 MiB batches hold 5349 rows
		{"600 rows in batches of 250", mnistShard(t, 600), 250, 3},
		{"empty", &Dataset{X: []float32{}, Y: []int32{}, Dim: 784, Classes: 10}, 0, 1},
		{"negative zero and extremes", &Dataset{
			X: []float32{float32(math.Copysign(0, -1)), math.MaxFloat32, -math.SmallestNonzeroFloat32, 1e-40},
			Y: []int32{2, 0}, Dim: 2, Classes: 3,
		}, 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b []byte
			var err error
			if tc.batchRow > 0 {
				b, err = NewShardEncoder().encode(tc.d, tc.batchRow)
			} else {
				b, err = EncodeShard(tc.d)
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeShard(b, tc.d.Dim, tc.d.Classes, tc.d.Len())
			if err != nil {
				t.Fatalf("DecodeShard: %v", err)
			}
			if !bitEqual(got, tc.d) {
				t.Fatalf("round trip is not bit-exact")
			}
			if n := countBatches(t, b); n != tc.batches {
				t.Errorf("%d record batches, expected %d", n, tc.batches)
			}
			if tc.d.Len() == 600 && tc.batchRow == 0 {
				raw := 600 * (784 + 1) * 4
				t.Logf("600-row MNIST shard: %d bytes encoded, %d bytes raw float32+int32 (%.1f%%)", len(b), raw, 100*float64(len(b))/float64(raw))
			}
		})
	}
}

// countBatches counts the record batches in an IPC stream.
func countBatches(t *testing.T, b []byte) int {
	t.Helper()
	r, err := ipc.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	n := 0
	for r.Next() {
		n++
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	return n
}

func TestEncodeShardRejectsInvalid(t *testing.T) {
	tests := []struct {
		name string
		d    *Dataset
		want string
	}{
		{"nil", nil, "got nil"},
		{"zero dim", &Dataset{Dim: 0, Classes: 2}, "Dim must be positive, got 0"},
		{"zero classes", &Dataset{Dim: 1, Classes: 0}, "Classes must be positive, got 0"},
		{"length mismatch", &Dataset{X: []float32{1, 2, 3}, Y: []int32{0, 1}, Dim: 2, Classes: 2}, "len(X) = 3"},
		{"label too big", &Dataset{X: []float32{1, 2}, Y: []int32{0, 2}, Dim: 1, Classes: 2}, "row 1: label 2 outside [0, 2)"},
		{"negative label", &Dataset{X: []float32{1}, Y: []int32{-1}, Dim: 1, Classes: 2}, "label -1"},
		{"NaN", &Dataset{X: []float32{1, float32(math.NaN())}, Y: []int32{0}, Dim: 2, Classes: 2}, "row 0, feature 1: expected a finite value, got NaN"},
		{"Inf", &Dataset{X: []float32{float32(math.Inf(-1))}, Y: []int32{0}, Dim: 1, Classes: 2}, "got -Inf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := EncodeShard(tc.d)
			wantErr(t, err, "encode shard", tc.want)
		})
	}
}

// shardStream writes one record batch per entry of batches with the given
// schema; each batch function fills a record builder.
func shardStream(t testing.TB, schema *arrow.Schema, batches ...func(b *array.RecordBuilder)) []byte {
	t.Helper()
	return buildIPC(t, false, schema, batches...)
}

// schemaOf builds a schema with "classes" metadata (omitted when classes is "").
func schemaOf(classes string, fields ...arrow.Field) *arrow.Schema {
	if classes == "" {
		return arrow.NewSchema(fields, nil)
	}
	md := arrow.NewMetadata([]string{"classes"}, []string{classes})
	return arrow.NewSchema(fields, &md)
}

var (
	labelField = arrow.Field{Name: "label", Type: arrow.PrimitiveTypes.Int32}
	feat4Field = arrow.Field{Name: "features", Type: arrow.FixedSizeListOf(4, arrow.PrimitiveTypes.Float32)}
)

// fillRows appends rows (label, 4 features) to a {label, features[4]} builder.
func fillRows(labels []int32, feats []float32) func(*array.RecordBuilder) {
	return func(rb *array.RecordBuilder) {
		rb.Field(0).(*array.Int32Builder).AppendValues(labels, nil)
		lb := rb.Field(1).(*array.FixedSizeListBuilder)
		vb := lb.ValueBuilder().(*array.Float32Builder)
		for i := range labels {
			lb.Append(true)
			vb.AppendValues(feats[4*i:4*i+4], nil)
		}
	}
}

func TestDecodeShardErrors(t *testing.T) {
	good := fillRows([]int32{0, 1}, []float32{1, 2, 3, 4, 5, 6, 7, 8})
	s4 := schemaOf("3", labelField, feat4Field)
	valid := shardStream(t, s4, good)
	mnist600, err := EncodeShard(mnistShard(t, 600))
	if err != nil {
		t.Fatal(err)
	}
	lz4 := ipcWrite(t, false, []ipc.Option{ipc.WithSchema(s4), ipc.WithLZ4()}, newRecord(t, s4, good))
	d783 := mnistShard(t, 3)
	d783 = &Dataset{X: d783.X[:3*783], Y: d783.Y, Dim: 783, Classes: 10}
	enc783, err := EncodeShard(d783)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name                  string
		b                     []byte
		dim, classes, maxRows int
		want                  []string
	}{
		{name: "valid", b: valid, dim: 4, classes: 3, maxRows: 2},
		{name: "valid three batches", b: shardStream(t, s4, good, good, good), dim: 4, classes: 3, maxRows: 6},
		{name: "label float64", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, schemaOf("3", arrow.Field{Name: "label", Type: arrow.PrimitiveTypes.Float64}, feat4Field), func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Float64Builder).Append(1)
				rb.Field(1).(*array.FixedSizeListBuilder).Append(true)
				rb.Field(1).(*array.FixedSizeListBuilder).ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2, 3, 4}, nil)
			}),
			want: []string{`column "label": expected type int32, got float64`}},
		{name: "missing features column", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, schemaOf("3", labelField), func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
			}),
			want: []string{"expected schema {label: int32, features: fixed_size_list<float32>[4]}", "got 1 columns [label: int32]"}},
		{name: "extra column", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, schemaOf("3", labelField, feat4Field, arrow.Field{Name: "weight", Type: arrow.PrimitiveTypes.Float32}), func(rb *array.RecordBuilder) {
				fillRows([]int32{0}, []float32{1, 2, 3, 4})(rb)
				rb.Field(2).(*array.Float32Builder).Append(1)
			}),
			want: []string{"got 3 columns", "weight: float32"}},
		{name: "renamed column", dim: 4, classes: 3, maxRows: 9,
			b:    shardStream(t, schemaOf("3", arrow.Field{Name: "y", Type: arrow.PrimitiveTypes.Int32}, feat4Field), fillRows([]int32{0}, []float32{1, 2, 3, 4})),
			want: []string{"got columns [y: int32 features:"}},
		{name: "list size 783", b: enc783, dim: 784, classes: 10, maxRows: 600,
			want: []string{`column "features": expected list size 784`, "got 783"}},
		{name: "features of float64", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, schemaOf("3", labelField, arrow.Field{Name: "features", Type: arrow.FixedSizeListOf(4, arrow.PrimitiveTypes.Float64)}), func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
				rb.Field(1).(*array.FixedSizeListBuilder).Append(true)
				rb.Field(1).(*array.FixedSizeListBuilder).ValueBuilder().(*array.Float64Builder).AppendValues([]float64{1, 2, 3, 4}, nil)
			}),
			want: []string{"expected float32 list elements, got float64"}},
		{name: "features as variable list", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, schemaOf("3", labelField, arrow.Field{Name: "features", Type: arrow.ListOf(arrow.PrimitiveTypes.Float32)}), func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
				rb.Field(1).(*array.ListBuilder).Append(true)
				rb.Field(1).(*array.ListBuilder).ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2, 3, 4}, nil)
			}),
			want: []string{"expected type fixed_size_list<float32>[4], got list<item: float32"}},
		{name: "classes mismatch", b: mnist600, dim: 784, classes: 9, maxRows: 600,
			want: []string{`expected schema metadata "classes" = 9, got "10"`}},
		{name: "classes missing", b: shardStream(t, schemaOf("", labelField, feat4Field), good), dim: 4, classes: 3, maxRows: 9,
			want: []string{`expected schema metadata "classes" = 3, got no such key`}},
		{name: "too many rows", b: mnist600, dim: 784, classes: 10, maxRows: 599,
			want: []string{"record batch 0: expected at most 599 rows in the shard, got 600 after 0 earlier rows"}},
		{name: "too many rows over batches", b: shardStream(t, s4, good, good, good), dim: 4, classes: 3, maxRows: 5,
			want: []string{"record batch 2", "expected at most 5 rows in the shard, got 2 after 4 earlier rows"}},
		{name: "label out of range", b: shardStream(t, s4, fillRows([]int32{0, 3}, make([]float32, 8))), dim: 4, classes: 3, maxRows: 9,
			want: []string{"row 1: expected a label in [0, 3), got 3"}},
		{name: "negative label", b: shardStream(t, s4, fillRows([]int32{-2}, make([]float32, 4))), dim: 4, classes: 3, maxRows: 9,
			want: []string{"row 0: expected a label in [0, 3), got -2"}},
		{name: "NaN feature", b: shardStream(t, s4, fillRows([]int32{0, 1}, []float32{0, 0, 0, 0, 0, 0, float32(math.NaN()), 0})), dim: 4, classes: 3, maxRows: 9,
			want: []string{"row 1, feature 2: expected a finite value, got NaN"}},
		{name: "Inf feature", b: shardStream(t, s4, fillRows([]int32{0}, []float32{float32(math.Inf(1)), 0, 0, 0})), dim: 4, classes: 3, maxRows: 9,
			want: []string{"row 0, feature 0: expected a finite value, got +Inf"}},
		{name: "null label", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, s4, func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).AppendNull()
				rb.Field(1).(*array.FixedSizeListBuilder).Append(true)
				rb.Field(1).(*array.FixedSizeListBuilder).ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2, 3, 4}, nil)
			}),
			want: []string{`column "label": expected no nulls, got 1`}},
		{name: "null feature row", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, s4, func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(0)
				rb.Field(1).(*array.FixedSizeListBuilder).AppendNull()
			}),
			want: []string{`column "features": expected no null rows, got 1`}},
		{name: "null feature value", dim: 4, classes: 3, maxRows: 9,
			b: shardStream(t, s4, func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(0)
				rb.Field(1).(*array.FixedSizeListBuilder).Append(true)
				rb.Field(1).(*array.FixedSizeListBuilder).ValueBuilder().(*array.Float32Builder).AppendValues([]float32{1, 2, 3, 4}, []bool{true, false, true, true})
			}),
			want: []string{`column "features": expected no null features, got 1`}},
		{name: "empty input", b: nil, dim: 4, classes: 3, maxRows: 9, want: []string{"expected an Arrow IPC stream, got 0 bytes"}},
		{name: "garbage", b: []byte("this is not an arrow stream, not at all........"), dim: 4, classes: 3, maxRows: 9,
			want: []string{"expected the Arrow IPC continuation marker 0xffffffff, got 0x73696874"}},
		{name: "truncated in half", b: mnist600[:len(mnist600)/2], dim: 784, classes: 10, maxRows: 600,
			want: []string{"message 1 at byte", "body bytes, only", "truncated stream?"}},
		{name: "truncated by one byte", b: valid[:len(valid)-1], dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 2", "expected an 8-byte message prefix or end-of-stream marker, got 7 bytes"}},
		{name: "truncated before end marker", b: valid[:len(valid)-8], dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 2", "got 0 bytes (truncated stream?)"}},
		{name: "schema only", b: valid[:firstMessageEnd(t, valid)], dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 1", "got 0 bytes"}},
		{name: "no schema", b: []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, dim: 4, classes: 3, maxRows: 9,
			want: []string{"expected a schema message first, got the end-of-stream marker"}},
		{name: "trailing bytes", b: append(append([]byte{}, valid...), 1, 2, 3), dim: 4, classes: 3, maxRows: 9,
			want: []string{"got 3 more bytes"}},
		{name: "legacy framing", b: valid[4:], dim: 4, classes: 3, maxRows: 9,
			want: []string{"expected the Arrow IPC continuation marker 0xffffffff"}},
		{name: "two schema messages", b: append(append([]byte{}, valid[:firstMessageEnd(t, valid)]...), valid...), dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 1: expected a record batch message, got a schema message"}},
		{name: "huge metadata vector", b: patchSchema(t, valid, "metadata length"), dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 0", "Schema.custom_metadata", "outside the message metadata"}},
		{name: "cyclic field children", b: patchSchema(t, valid, "cycle"), dim: 4, classes: 3, maxRows: 9,
			want: []string{"message 0", "Schema.fields: element 1: children: element 0"}},
		{name: "field child aliased to label field", b: patchSchema(t, valid, "alias"), dim: 4, classes: 3, maxRows: 9,
			want: []string{`column "features": expected float32 list elements, got int32`}},
		{name: "file format, not stream", b: arrowFileBytes(t, s4, good), dim: 4, classes: 3, maxRows: 9,
			want: []string{"expected the Arrow IPC stream format, got the IPC file format"}},
		{name: "huge decompressed size", b: patchUncompressedSize(t, mnist600, 600*784*4, 1<<40), dim: 784, classes: 10, maxRows: 600,
			want: []string{"record batch 0: buffer 4: expected an uncompressed length in [0, ", "] for this shard size, got 1099511627776"}},
		{name: "LZ4 body", b: lz4, dim: 4, classes: 3, maxRows: 9,
			want: []string{"record batch 0: expected ZSTD or no body compression, got codec 0"}},
		{name: "negative decompressed size", b: patchUncompressedSize(t, mnist600, 600*784*4, -7), dim: 784, classes: 10, maxRows: 600,
			want: []string{"buffer 4", "got -7"}},
		// A frame of several segments (header descriptor 0) whose window
		// descriptor claims 1 TiB.
		{name: "huge ZSTD window", b: patchZstdHeader(t, patchZstdHeader(t, mnist600, 600*784*4, 0, 0), 600*784*4, 1, 0xf0), dim: 784, classes: 10, maxRows: 600,
			want: []string{"buffer 4: ZSTD frame window of 1099511627776 bytes exceeds 8388608"}},
		{name: "ZSTD reserved bit", b: patchZstdHeader(t, mnist600, 600*784*4, 0, 0x0c), dim: 784, classes: 10, maxRows: 600,
			want: []string{"reserved bit"}},
		{name: "bad dim", b: valid, dim: 0, classes: 3, maxRows: 9, want: []string{"expected dim in [1,"}},
		{name: "bad classes", b: valid, dim: 4, classes: -1, maxRows: 9, want: []string{"expected classes in [1,"}},
		{name: "bad maxRows", b: valid, dim: 4, classes: 3, maxRows: -1, want: []string{"expected maxRows ≥ 0, got -1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecodeShard(tc.b, tc.dim, tc.classes, tc.maxRows)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if err := d.Validate(); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, tc.want...)
			if d != nil {
				t.Errorf("got a dataset along with the error")
			}
		})
	}
}

// firstMessageEnd returns the offset just past the first (schema) message of
// an IPC stream: continuation token, length, metadata, no body.
func firstMessageEnd(t *testing.T, b []byte) int {
	t.Helper()
	if len(b) < 8 || binary.LittleEndian.Uint32(b) != 0xffffffff {
		t.Fatal("not a continuation-prefixed IPC stream")
	}
	return 8 + int(binary.LittleEndian.Uint32(b[4:]))
}

// patchSchema corrupts the schema message of a {label, features} stream
// made by shardStream or EncodeShard:
//
//   - "metadata length": the Schema.custom_metadata vector claims 2^27
//     entries (the Arrow reader would allocate 4 GiB for their strings);
//   - "cycle": the features field's first child points back at the features
//     field through uint32 wrap-around (the Arrow reader would recurse until
//     the Go stack overflows, a fatal error);
//   - "alias": the features field's child is the label field (which lies
//     after it, so no wrap-around): a well-formed DAG that parses as
//     fixed_size_list<int32>.
func patchSchema(t *testing.T, b []byte, how string) []byte {
	t.Helper()
	out := append([]byte{}, b...)
	metaLen := int64(binary.LittleEndian.Uint32(out[4:]))
	v := &fbVerifier{buf: out[8 : 8+metaLen], budget: math.MaxInt64}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	root, err := v.u32(0)
	must(err)
	msg, err := v.table(int64(root))
	must(err)
	s, _, err := v.tableField(msg, 2)
	must(err)
	switch how {
	case "metadata length":
		p, ok, err := v.ref(s, 2)
		must(err)
		if !ok {
			t.Fatal("schema has no custom_metadata")
		}
		binary.LittleEndian.PutUint32(v.buf[p:], 1<<27)
		return out
	}
	start, _, err := v.vector(s, 1, 4)
	must(err)
	field := func(j int64) int64 {
		off, err := v.u32(start + 4*j)
		must(err)
		return start + 4*j + int64(off)
	}
	feat, err := v.table(field(1))
	must(err)
	kids, n, err := v.vector(feat, 5, 4)
	must(err)
	if n != 1 {
		t.Fatalf("features field has %d children, expected 1", n)
	}
	target := field(1)
	if how == "alias" {
		target = field(0)
	}
	binary.LittleEndian.PutUint32(v.buf[kids:], uint32(target-kids)) // wraps when target < kids
	return out
}

// patchUncompressedSize rewrites the 8-byte uncompressed-length prefix of the
// compressed buffer whose real uncompressed length is old.
func patchUncompressedSize(t *testing.T, b []byte, old, patched int64) []byte {
	t.Helper()
	var pat [8]byte
	binary.LittleEndian.PutUint64(pat[:], uint64(old))
	if bytes.Count(b, pat[:]) != 1 {
		t.Fatalf("expected the length prefix %d exactly once in the stream, found it %d times", old, bytes.Count(b, pat[:]))
	}
	out := append([]byte{}, b...)
	at := bytes.Index(out, pat[:])
	binary.LittleEndian.PutUint64(out[at:], uint64(patched))
	return out
}

// patchZstdHeader sets byte at (0 = frame header descriptor, 1 = window
// descriptor) of the ZSTD frame in the buffer whose uncompressed length is
// size.
func patchZstdHeader(t *testing.T, b []byte, size int64, at int, v byte) []byte {
	t.Helper()
	out := patchUncompressedSize(t, b, size, size)
	var pat [8]byte
	binary.LittleEndian.PutUint64(pat[:], uint64(size))
	p := bytes.Index(out, pat[:]) + 8
	if binary.LittleEndian.Uint32(out[p:]) != zstdMagic {
		t.Fatalf("no ZSTD frame after the length prefix")
	}
	out[p+4+at] = v
	return out
}

// arrowFileBytes writes an Arrow IPC file (not stream) in memory.
func arrowFileBytes(t *testing.T, schema *arrow.Schema, fill func(*array.RecordBuilder)) []byte {
	t.Helper()
	return buildIPC(t, true, schema, fill)
}

// TestDecodeShardTruncations cuts a valid stream at every length: each prefix
// is an error, never a panic or a shorter shard.
func TestDecodeShardTruncations(t *testing.T) {
	d := &Dataset{X: []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, Y: []int32{0, 2, 1}, Dim: 4, Classes: 3}
	b, err := EncodeShard(d)
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(b) {
		if _, err := DecodeShard(b[:n], 4, 3, 10); err == nil {
			t.Fatalf("prefix of %d of %d bytes decoded without error", n, len(b))
		}
	}
}

func FuzzDecodeShard(f *testing.F) {
	const dim, classes, maxRows = 4, 3, 64
	small := &Dataset{X: []float32{0, 0.5, 1, 0, 0, 0, 0.25, 0}, Y: []int32{2, 0}, Dim: dim, Classes: classes}
	enc, err := EncodeShard(small)
	if err != nil {
		f.Fatal(err)
	}
	empty, err := EncodeShard(&Dataset{Dim: dim, Classes: classes})
	if err != nil {
		f.Fatal(err)
	}
	s4 := schemaOf("3", labelField, feat4Field)
	good := fillRows([]int32{0, 1}, []float32{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(enc)
	f.Add(empty)
	f.Add(shardStream(f, s4, good, good))
	f.Add(enc[:len(enc)/2])
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0})
	for _, h := range handmadeStreams(f) {
		f.Add(h.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeShard(b, dim, classes, maxRows)
		if err != nil && strings.Contains(err.Error(), "malformed Arrow IPC stream (") {
			t.Fatalf("DecodeShard's last-resort recover fired: %v", err)
		}
		if err != nil && strictlyRejected(err) {
			// Whatever Arrow's reader makes of it is not compared, and it
			// is not run: on some of these streams (buffers missing from
			// the metadata, which it reads past the vector's end) it
			// allocates what garbage sizes say, up to terabytes.
			return
		}
		od, oerr := decodeShardArrow(b, dim, classes, maxRows)
		switch {
		case err != nil && oerr == nil:
			t.Fatalf("DecodeShard failed (%v) where Arrow's reader decoded %d rows", err, od.Len())
		case err == nil && oerr != nil:
			t.Fatalf("DecodeShard decoded %d rows where Arrow's reader failed: %v", d.Len(), oerr)
		case err == nil && !bitEqual(d, od):
			t.Fatalf("DecodeShard and Arrow's reader decoded different shards:\n%+v\n%+v", d, od)
		}
		if err != nil {
			return
		}
		if d.Dim != dim || d.Classes != classes || d.Len() > maxRows {
			t.Fatalf("decoded Dim %d Classes %d rows %d; expected %d, %d, ≤ %d", d.Dim, d.Classes, d.Len(), dim, classes, maxRows)
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded an invalid dataset: %v", err)
		}
		re, err := EncodeShard(d)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := DecodeShard(re, dim, classes, maxRows)
		if err != nil || !bitEqual(d, d2) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
	})
}

// strictlyRejected reports whether DecodeShard's error is one it may give
// where Arrow's reader, which DecodeShard otherwise matches, decodes:
//   - a field node that declares nulls its validity bitmap does not have
//     (Arrow's reader trusts the bitmap);
//   - a feature-values node longer than rows × dim, or a compressed buffer
//     stated to hold more bytes than its column needs (Arrow's reader uses
//     the first ones);
//   - a field node with a negative null count (Arrow's reader takes it as
//     unknown);
//   - a ZSTD frame that decodes to more than its stated size or its
//     header's content size, or whose checksum is wrong (Arrow's reader
//     reads the stated size and stops);
//   - a batch with field nodes or buffers other than the schema's three and
//     five (Arrow's reader takes extra ones, and some batches of no rows
//     without any);
//   - a buffer stored uncompressed that is shorter than its column needs
//     (Arrow's reader slices past its end, into the rest of the body).
func strictlyRejected(err error) bool {
	for _, s := range []string{"expected no null", "feature values, got", "uncompressed bytes, got",
		"ZSTD frame decodes to more than", "raw and RLE blocks decode to more than", "corrupt ZSTD frame",
		"expected 3 field nodes and 5 buffers"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return shortBuffer.MatchString(err.Error())
}

// shortBuffer is DecodeShard's error for a stored buffer too short.
var shortBuffer = regexp.MustCompile(`buffer \d+: expected at least \d+ bytes, got \d+`)

// TestDecodeShardMatchesArrowReader decodes shards of real MNIST rows, in
// one and in several record batches, compressed and not, with the columns
// in either order, and compares every value with Arrow's own reader.
func TestDecodeShardMatchesArrowReader(t *testing.T) {
	d := mnistShard(t, 600)
	one, err := EncodeShard(d)
	if err != nil {
		t.Fatal(err)
	}
	several, err := NewShardEncoder().encode(d, 250) // batches of 250, 250 and 100 rows
	if err != nil {
		t.Fatal(err)
	}
	rows := func(rb *array.RecordBuilder, labelCol, featCol int) {
		rb.Field(labelCol).(*array.Int32Builder).AppendValues(d.Y[:50], nil)
		lb := rb.Field(featCol).(*array.FixedSizeListBuilder)
		for i := range 50 {
			lb.Append(true)
			lb.ValueBuilder().(*array.Float32Builder).AppendValues(d.X[i*d.Dim:(i+1)*d.Dim], nil)
		}
	}
	feat := arrow.Field{Name: "features", Type: arrow.FixedSizeListOf(int32(d.Dim), arrow.PrimitiveTypes.Float32)}
	swapped := buildIPC(t, false, schemaOf("10", feat, labelField), func(rb *array.RecordBuilder) { rows(rb, 1, 0) })
	// Arrow's writer stores values in this machine's order: its schema
	// must say so.
	md := shardSchema(d.Dim, d.Classes).Metadata()
	native := arrow.NewSchema(shardSchema(d.Dim, d.Classes).Fields(), &md)
	var plain bytes.Buffer
	w := ipc.NewWriter(&plain, ipc.WithSchema(native))
	rec := shardRecord(native, d, 0, 50)
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	rec.Release()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		rows int
	}{{"one batch", one, 600}, {"three batches", several, 600}, {"columns swapped", swapped, 50}, {"uncompressed", plain.Bytes(), 50}} {
		t.Run(tc.name, func(t *testing.T) {
			b := slices.Clone(tc.b)
			got, err := DecodeShard(b, d.Dim, d.Classes, 600)
			if err != nil {
				t.Fatal(err)
			}
			clear(b) // the dataset must not share memory with the input
			want, err := decodeShardArrow(tc.b, d.Dim, d.Classes, 600)
			if err != nil {
				t.Fatal(err)
			}
			if got.Len() != tc.rows || !bitEqual(got, want) {
				t.Fatalf("decoded %d rows, Arrow's reader %d; want %d rows, bit for bit the same", got.Len(), want.Len(), tc.rows)
			}
			if !slices.Equal(got.Y, d.Y[:tc.rows]) || !slices.Equal(got.X, d.X[:tc.rows*d.Dim]) {
				t.Fatal("decoded rows differ from the encoded dataset's")
			}
		})
	}
}

func BenchmarkEncodeShard(b *testing.B) {
	d := mnistShard(b, 600)
	raw := int64(len(d.X)*4 + len(d.Y)*4)
	b.SetBytes(raw)
	var n int
	for b.Loop() {
		enc, err := EncodeShard(d)
		if err != nil {
			b.Fatal(err)
		}
		n = len(enc)
	}
	b.ReportMetric(float64(n), "encoded_bytes")
	b.ReportMetric(float64(raw), "raw_bytes")
}

// BenchmarkDecodeShard decodes a 600-row MNIST shard (a demo client's) with
// DecodeShard and, as the anchor, with Arrow's reader (decodeShardArrow).
func BenchmarkDecodeShard(b *testing.B) {
	d := mnistShard(b, 600)
	enc, err := EncodeShard(d)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		decode func([]byte, int, int, int) (*Dataset, error)
	}{{"ours", DecodeShard}, {"arrow", decodeShardArrow}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(d.X)*4 + len(d.Y)*4))
			for b.Loop() {
				if _, err := bc.decode(enc, d.Dim, d.Classes, d.Len()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(enc)), "encoded_bytes")
		})
	}
}

// TestReadShardBuffer checks and decodes buffers DecodeShard's own encoder
// does not write: ZSTD frames that do not state their content size (as a
// streaming encoder writes them), ones that decode to more or less than
// they are stated to, stated sizes other than the column's, and buffers
// stored uncompressed.
func TestReadShardBuffer(t *testing.T) {
	want := make([]byte, 3000)
	for i := range want {
		want[i] = byte(i % 7)
	}
	stream := func(b []byte) []byte { // a frame without a content size
		var buf bytes.Buffer
		w, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		// Flushing part of it first starts the frame before its size
		// is known.
		if _, err := w.Write(b[:len(b)/2]); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b[len(b)/2:]); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if fhd := buf.Bytes()[4]; fhd>>6 != 0 || fhd&0x20 != 0 {
			t.Fatalf("frame header descriptor %#x states a content size", fhd)
		}
		return buf.Bytes()
	}
	sized := func(b []byte) []byte { // a frame stating its content size
		e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		return e.EncodeAll(b, nil)
	}
	batch := func(size int64, payload []byte) *ipcBatch {
		body := binary.LittleEndian.AppendUint64(nil, uint64(size))
		body = append(body, payload...)
		return &ipcBatch{ipcMessage: ipcMessage{compressed: true, codec: fbCompressionZSTD, buffers: [][2]int64{{0, int64(len(body))}}}, body: body}
	}
	dec := zstdDecoders.Get().(*shardDecoders)
	defer zstdDecoders.Put(dec)
	for _, tc := range []struct {
		name string
		rb   *ipcBatch
		want string // error, or "" to expect want's bytes
	}{
		{"content size stated", batch(3000, sized(want)), ""},
		{"no content size", batch(3000, stream(want)), ""},
		{"stored uncompressed", batch(-1, want), ""},
		{"stored uncompressed, padded", batch(-1, append(slices.Clone(want), 0, 0, 0, 0)), ""},
		{"stored uncompressed, too short", batch(-1, want[:2000]), "buffer 0: expected at least 3000 bytes, got 2000"},
		{"stated larger", batch(4000, stream(want)), "buffer 0: expected 3000 uncompressed bytes, got 4000"},
		{"stated smaller", batch(2000, stream(want[:2000])), "buffer 0: expected 3000 uncompressed bytes, got 2000"},
		{"frame longer than stated", batch(3000, stream(make([]byte, 64<<20))), "buffer 0: ZSTD frame decodes to more than the stated 3000 bytes"},
		{"frame shorter than stated", batch(3000, stream(want[:2000])), "buffer 0: ZSTD frame decodes to 2000 bytes, 3000 stated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, 3000, 3000+zstdSlack)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := checkShardBuffer(tc.rb, 0, int64(len(dst)))
			if err == nil {
				err = readShardBuffer(dst, tc.rb, 0, dec)
			}
			runtime.ReadMemStats(&after)
			// A 64 MiB frame stated as 3,000 bytes is refused within
			// its output buffer.
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("decoding allocated %d bytes", grew)
			}
			if tc.want != "" {
				wantErr(t, err, tc.want)
				return
			}
			if err != nil || !bytes.Equal(dst, want) {
				t.Fatalf("err %v, bytes equal %v", err, bytes.Equal(dst, want))
			}
		})
	}
}

// TestEncodeShardDeterministic: a dataset's encoding depends on its values
// only, not on its slices' capacity (a decoded shard has spare capacity) or
// on the encoders' history.
func TestEncodeShardDeterministic(t *testing.T) {
	d := mnistShard(t, 30)
	for _, rows := range []int{0, 1, 30} {
		plain := &Dataset{X: slices.Clip(d.X[:rows*d.Dim]), Y: slices.Clip(d.Y[:rows]), Dim: d.Dim, Classes: d.Classes}
		spare := &Dataset{X: append(make([]float32, 0, rows*d.Dim+7), plain.X...), Y: append(make([]int32, 0, rows+3), plain.Y...), Dim: d.Dim, Classes: d.Classes}
		a, err := EncodeShard(plain)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := EncodeShard(d); err != nil { // the pooled encoder's history changes
			t.Fatal(err)
		}
		b, err := EncodeShard(spare)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%d rows: %d and %d bytes, not the same encoding", rows, len(a), len(b))
		}
		back, err := DecodeShard(a, d.Dim, d.Classes, rows)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := EncodeShard(back); err != nil || !bytes.Equal(a, again) {
			t.Fatalf("%d rows: re-encoding the decoded shard changed it (%v)", rows, err)
		}
	}
}
