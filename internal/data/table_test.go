package data

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// tableRows is the test table: label, then x1 (float64), x2 (int32), a
// two-wide float32 list and x3 (uint8) as features, in that column order
// (the label sits second in the file).
var tableWant = &Dataset{
	X: []float32{
		0.5, -3, 1, 2, 7,
		1e3, 0, 3, 4, 0,
		-2.25, 9, 5, 6, 255,
	},
	Y:       []int32{2, 0, 4},
	Dim:     5,
	Classes: 5,
}

// tableSchema returns the schema of the test table with the given features
// list type.
func tableSchema(list arrow.DataType) *arrow.Schema {
	return arrow.NewSchema([]arrow.Field{
		{Name: "x1", Type: arrow.PrimitiveTypes.Float64},
		{Name: "label", Type: arrow.PrimitiveTypes.Int64},
		{Name: "x2", Type: arrow.PrimitiveTypes.Int32},
		{Name: "features", Type: list},
		{Name: "x3", Type: arrow.PrimitiveTypes.Uint8},
	}, nil)
}

// tableBatches builds the test table as two record batches (rows 0 and 1..2).
func tableBatches(t testing.TB, list arrow.DataType) []arrow.RecordBatch {
	t.Helper()
	schema := tableSchema(list)
	x1 := []float64{0.5, 1e3, -2.25}
	label := []int64{2, 0, 4}
	x2 := []int32{-3, 0, 9}
	feats := []float32{1, 2, 3, 4, 5, 6}
	x3 := []uint8{7, 0, 255}
	var out []arrow.RecordBatch
	for _, r := range [][2]int{{0, 1}, {1, 3}} {
		rb := array.NewRecordBuilder(memory.DefaultAllocator, schema)
		rb.Field(0).(*array.Float64Builder).AppendValues(x1[r[0]:r[1]], nil)
		rb.Field(1).(*array.Int64Builder).AppendValues(label[r[0]:r[1]], nil)
		rb.Field(2).(*array.Int32Builder).AppendValues(x2[r[0]:r[1]], nil)
		lb := rb.Field(3).(array.ListLikeBuilder)
		for i := r[0]; i < r[1]; i++ {
			lb.Append(true)
			lb.ValueBuilder().(*array.Float32Builder).AppendValues(feats[2*i:2*i+2], nil)
		}
		rb.Field(4).(*array.Uint8Builder).AppendValues(x3[r[0]:r[1]], nil)
		out = append(out, rb.NewRecordBatch())
		rb.Release()
	}
	t.Cleanup(func() {
		for _, rec := range out {
			rec.Release()
		}
	})
	return out
}

// writeArrowFile writes batches in the IPC file format.
func writeArrowFile(t *testing.T, path string, recs []arrow.RecordBatch) {
	t.Helper()
	writeFile(t, path, ipcBytes(t, true, recs[0].Schema(), recs...))
}

// writeArrowStream writes batches in the IPC stream format.
func writeArrowStream(t *testing.T, path string, recs []arrow.RecordBatch) {
	t.Helper()
	writeFile(t, path, ipcBytes(t, false, recs[0].Schema(), recs...))
}

// writeParquet writes batches as a Parquet file with row groups of at most
// rowGroup rows.
func writeParquet(t *testing.T, path string, recs []arrow.RecordBatch, rowGroup int64) {
	t.Helper()
	tbl := array.NewTableFromRecords(recs[0].Schema(), recs)
	defer tbl.Release()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pqarrow.WriteTable(tbl, f, rowGroup, parquet.NewWriterProperties(), pqarrow.DefaultWriterProps()); err != nil {
		t.Fatal(err)
	}
}

func TestLoadTable(t *testing.T) {
	dir := t.TempDir()
	fixed := arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32)
	variable := arrow.ListOf(arrow.PrimitiveTypes.Float32)
	csvText := "x1,label,x2,f0,f1,x3\n" +
		"0.5,2,-3,1,2,7\n" +
		"1e3, 0 ,0,3,4,0\n" +
		"-2.25,4.0,9,5,6,255\n"
	tests := []struct {
		name  string
		file  string
		write func(path string)
	}{
		{"csv", "t.csv", func(p string) { writeFile(t, p, []byte(csvText)) }},
		{"csv with BOM and CRLF", "bom.CSV", func(p string) {
			writeFile(t, p, []byte("\ufeff"+string(bytes.ReplaceAll([]byte(csvText), []byte("\n"), []byte("\r\n")))))
		}},
		{"arrow file", "t.arrow", func(p string) { writeArrowFile(t, p, tableBatches(t, fixed)) }},
		{"feather", "t.feather", func(p string) { writeArrowFile(t, p, tableBatches(t, fixed)) }},
		{"arrow stream", "t.arrows", func(p string) { writeArrowStream(t, p, tableBatches(t, fixed)) }},
		{"stream named .arrow", "s.arrow", func(p string) { writeArrowStream(t, p, tableBatches(t, fixed)) }},
		// The format allows a writer to end a stream by just closing it.
		{"stream without its end-of-stream marker", "open.arrows", func(p string) {
			recs := tableBatches(t, fixed)
			b := ipcBytes(t, false, recs[0].Schema(), recs...)
			if !bytes.HasSuffix(b, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}) {
				t.Fatal("the stream does not end with the end-of-stream marker")
			}
			writeFile(t, p, b[:len(b)-8])
		}},
		{"ipc with variable lists", "v.ipc", func(p string) { writeArrowFile(t, p, tableBatches(t, variable)) }},
		{"feather, LZ4", "lz4.feather", func(p string) {
			recs := tableBatches(t, fixed)
			writeFile(t, p, ipcWrite(t, true, []ipc.Option{ipc.WithSchema(recs[0].Schema()), ipc.WithLZ4()}, recs...))
		}},
		{"arrow file, ZSTD", "zstd.arrow", func(p string) {
			recs := tableBatches(t, variable)
			writeFile(t, p, ipcWrite(t, true, []ipc.Option{ipc.WithSchema(recs[0].Schema()), ipc.WithZstd()}, recs...))
		}},
		// One row group: arrow-go v18.8.0's pqarrow writer ignores the
		// offset of a sliced fixed_size_list, so a row group that starts
		// inside a record batch would be written with the wrong values.
		{"parquet", "t.parquet", func(p string) { writeParquet(t, p, tableBatches(t, fixed), 3) }},
		{"parquet, variable lists, 2 row groups", "v.parquet", func(p string) { writeParquet(t, p, tableBatches(t, variable), 2) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			tc.write(path)
			got, err := LoadTable(path, "label")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tableWant) {
				t.Fatalf("got %+v\nexpected %+v", got, tableWant)
			}
		})
	}
}

func TestLoadTableShard(t *testing.T) {
	// A shard written by EncodeShard is itself a loadable Arrow table.
	d := mnistShard(t, 20)
	b, err := EncodeShard(d)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "shard.arrows")
	writeFile(t, path, b)
	got, err := LoadTable(path, "label")
	if err != nil {
		t.Fatal(err)
	}
	if got.Dim != 784 || !bitEqual(got, &Dataset{X: d.X, Y: d.Y, Dim: 784, Classes: got.Classes}) {
		t.Fatalf("loaded shard differs: Dim %d, %d rows", got.Dim, got.Len())
	}
}

func TestLoadTableErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, []byte(text))
		return p
	}
	arrowFile := func(name string, schema *arrow.Schema, fill func(*array.RecordBuilder)) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, arrowFileBytes(t, schema, fill))
		return p
	}
	noLabel := file("nolabel.csv", "a,b,c\n1,2,3\n")
	tests := []struct {
		name string
		path string
		want []string
	}{
		{"csv without label column", noLabel,
			[]string{`CSV file ` + noLabel + ` has no column "label"; columns are: a, b, c`}},
		{"missing csv", filepath.Join(dir, "nope.csv"), []string{"nope.csv", "no such file"}},
		{"missing arrow", filepath.Join(dir, "nope.arrow"), []string{"nope.arrow", "no such file"}},
		{"missing parquet", filepath.Join(dir, "nope.parquet"), []string{"nope.parquet", "no such file"}},
		{"unknown extension", file("t.txt", "label\n1\n"), []string{"t.txt", `expected extension .arrow, .arrows, .ipc, .feather, .parquet or .csv, got ".txt"`}},
		{"empty csv", file("empty.csv", ""), []string{"empty.csv", "expected a header row, got an empty file"}},
		{"header only", file("hdr.csv", "label,a\n"), []string{"hdr.csv", "expected at least one data row"}},
		{"label only", file("lbl.csv", "label\n1\n"), []string{"expected at least one feature column"}},
		{"negative label", file("neg.csv", "label,a\n1,0\n-1,0\n"), []string{"neg.csv", `data row 2, column "label"`, "expected a label in [0, 2147483647), got -1"}},
		{"fractional label", file("frac.csv", "label,a\n1.5,0\n"), []string{"expected an integer label, got 1.5"}},
		{"text label", file("txt.csv", "label,a\ncat,0\n"), []string{`expected an integer label, got "cat"`}},
		{"text feature", file("feat.csv", "label,a\n1,abc\n"), []string{`data row 1, column "a": expected a finite number, got "abc"`}},
		{"empty feature", file("gap.csv", "label,a,b\n1,,2\n"), []string{`column "a": expected a finite number, got ""`}},
		{"NaN feature", file("nan.csv", "label,a\n1,NaN\n"), []string{`got "NaN"`}},
		{"float32 overflow", file("big.csv", "label,a\n1,1e39\n"), []string{`got "1e39"`}},
		{"ragged row", file("ragged.csv", "label,a\n1,2,3\n"), []string{"ragged.csv", "wrong number of fields"}},
		{"duplicate label column", file("dup.csv", "label,label\n1,2\n"), []string{"two columns named \"label\""}},
		{"arrow string feature", arrowFile("str.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int32}, {Name: "name", Type: arrow.BinaryTypes.String}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
				rb.Field(1).(*array.StringBuilder).Append("x")
			}), []string{"str.arrow", `column "name": expected a numeric feature column`, "got utf8"}},
		{"arrow string label", arrowFile("strlabel.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.BinaryTypes.String}, {Name: "a", Type: arrow.PrimitiveTypes.Int32}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.StringBuilder).Append("x")
				rb.Field(1).(*array.Int32Builder).Append(1)
			}), []string{`label column "label": expected an integer column, got utf8`}},
		{"arrow null feature", arrowFile("null.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int32}, {Name: "a", Type: arrow.PrimitiveTypes.Float32, Nullable: true}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).AppendValues([]int32{1, 0}, nil)
				rb.Field(1).(*array.Float32Builder).AppendValues([]float32{1, 0}, []bool{true, false})
			}), []string{`row 1, column "a": expected a number, got null`}},
		{"arrow null label", arrowFile("nulllabel.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int32, Nullable: true}, {Name: "a", Type: arrow.PrimitiveTypes.Float32}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).AppendNull()
				rb.Field(1).(*array.Float32Builder).Append(1)
			}), []string{`label column "label": expected no nulls, got 1`}},
		{"arrow infinite feature", arrowFile("inf.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Uint8}, {Name: "a", Type: arrow.PrimitiveTypes.Float64}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Uint8Builder).Append(1)
				rb.Field(1).(*array.Float64Builder).Append(math.MaxFloat64)
			}), []string{`row 0, column "a": feature 0: expected a finite float32 value, got 1.7976931348623157e+308`}},
		{"arrow ragged lists", arrowFile("ragged.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int32}, {Name: "f", Type: arrow.ListOf(arrow.PrimitiveTypes.Float32)}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).AppendValues([]int32{0, 1}, nil)
				lb := rb.Field(1).(*array.ListBuilder)
				vb := lb.ValueBuilder().(*array.Float32Builder)
				lb.Append(true)
				vb.AppendValues([]float32{1, 2}, nil)
				lb.Append(true)
				vb.AppendValues([]float32{1, 2, 3}, nil)
			}), []string{`row 1, column "f": expected a list of 2 features (as in the first row), got 3`}},
		{"arrow without label", arrowFile("nolabel.arrow",
			arrow.NewSchema([]arrow.Field{{Name: "y", Type: arrow.PrimitiveTypes.Int32}, {Name: "a", Type: arrow.PrimitiveTypes.Float32}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
				rb.Field(1).(*array.Float32Builder).Append(1)
			}), []string{`Arrow file ` + filepath.Join(dir, "nolabel.arrow") + ` has no column "label"; columns are: y, a`}},
		{"garbage arrow", file("junk.arrow", "ARROW1\x00\x00not really"), []string{"junk.arrow", "Arrow file"}},
		{"truncated arrow file", file("cut.arrow", string(arrowFileBytes(t, tableSchema(arrow.PrimitiveTypes.Int8), func(rb *array.RecordBuilder) {})[:100])),
			[]string{"cut.arrow", `(IPC file format): expected an IPC file ending in a footer`}},
		{"truncated arrow stream", file("cut.arrows", string(ipcBytes(t, false, tableSchema(arrow.PrimitiveTypes.Int8))[:100])),
			[]string{"cut.arrows", "(IPC stream format): message 0 at byte 0: expected ", " metadata bytes, only 92 remain (truncated stream?)"}},
		{"dictionary column", file("dict.arrow", string(arrowFileBytes(t,
			arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int32}, {Name: "a", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.PrimitiveTypes.Float32}}}, nil),
			func(rb *array.RecordBuilder) {
				rb.Field(0).(*array.Int32Builder).Append(1)
				rb.Field(1).(*array.Float32DictionaryBuilder).Append(2)
			}))), []string{"dict.arrow", `column "a": expected a numeric feature column`, "got dictionary<values=float32"}},
		{"garbage parquet", file("junk.parquet", "PAR1 not really PAR1"), []string{"junk.parquet", "Parquet file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := LoadTable(tc.path, "label")
			wantErr(t, err, tc.want...)
			if d != nil {
				t.Errorf("got a dataset along with the error")
			}
		})
	}
}

// TestLoadTableRefusesHugeClaims gives LoadTable compressed Arrow files whose
// buffers claim a petabyte once uncompressed. Arrow's reader would allocate
// that before decompressing and the process would die; instead it is an
// error naming the file and the buffer.
func TestLoadTableRefusesHugeClaims(t *testing.T) {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "label", Type: arrow.PrimitiveTypes.Int32},
		{Name: "x", Type: arrow.PrimitiveTypes.Float32},
	}, nil)
	const rows = 1000
	rec := newRecord(t, schema, func(rb *array.RecordBuilder) {
		for i := range rows {
			rb.Field(0).(*array.Int32Builder).Append(int32(i % 10))
			rb.Field(1).(*array.Float32Builder).Append(0)
		}
	})

	dir := t.TempDir()
	for _, file := range []bool{true, false} {
		b := ipcWrite(t, file, []ipc.Option{ipc.WithSchema(schema), ipc.WithZstd()}, rec)
		name := map[bool]string{true: "huge.arrow", false: "huge.arrows"}[file]
		path := filepath.Join(dir, name)
		writeFile(t, path, b)
		if _, err := LoadTable(path, "label"); err != nil {
			t.Fatalf("%s before the edit: %v", name, err)
		}

		// Each compressed buffer starts with its uncompressed length (4000
		// bytes here), then the zstd frame's magic number.
		var want [12]byte
		binary.LittleEndian.PutUint64(want[:], 4*rows)
		binary.LittleEndian.PutUint32(want[8:], 0xFD2FB528)
		n := 0
		for i := bytes.Index(b, want[:]); i >= 0; i = bytes.Index(b, want[:]) {
			binary.LittleEndian.PutUint64(b[i:], 1<<50)
			n++
		}
		if n != 2 {
			t.Fatalf("%s: found %d compressed buffers of %d bytes, expected 2", name, n, 4*rows)
		}
		writeFile(t, path, b)
		d, err := LoadTable(path, "label")
		wantErr(t, err, name, "record batch 0: buffer 1: expected an uncompressed length in [0, ", "] (the dataset budget: half the memory this process can have), got 1125899906842624")
		if d != nil {
			t.Errorf("%s: got a dataset along with the error", name)
		}
	}
}

// FuzzLoadTable feeds LoadTable arbitrary Arrow and Parquet files. It must
// return a dataset or an error, never crash. The memory budget is lowered so
// that a claim the budget lets through still fits the fuzzing machine.
func FuzzLoadTable(f *testing.F) {
	budget := memoryBudget
	memoryBudget = func() int64 { return 16 << 20 }
	f.Cleanup(func() { memoryBudget = budget })

	dir := f.TempDir()
	seed := func(name string, write func(path string)) {
		path := filepath.Join(dir, name)
		write(path)
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, filepath.Ext(name) == ".parquet")
	}
	recs := tableBatches(f, arrow.ListOf(arrow.PrimitiveTypes.Float32))
	zstd := []ipc.Option{ipc.WithSchema(recs[0].Schema()), ipc.WithZstd()}
	seed("t.arrow", func(p string) { writeFile(f, p, ipcBytes(f, true, recs[0].Schema(), recs...)) })
	seed("z.arrow", func(p string) { writeFile(f, p, ipcWrite(f, true, zstd, recs...)) })
	seed("z.arrows", func(p string) { writeFile(f, p, ipcWrite(f, false, zstd, recs...)) })
	seed("t.parquet", func(p string) {
		tbl := array.NewTableFromRecords(recs[0].Schema(), recs)
		defer tbl.Release()
		var buf bytes.Buffer
		props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Zstd))
		if err := pqarrow.WriteTable(tbl, &buf, 2, props, pqarrow.DefaultWriterProps()); err != nil {
			f.Fatal(err)
		}
		writeFile(f, p, buf.Bytes())
	})

	f.Fuzz(func(t *testing.T, b []byte, isParquet bool) {
		name := "f.arrow"
		if isParquet {
			name = "f.parquet"
		}
		path := filepath.Join(t.TempDir(), name)
		writeFile(t, path, b)
		d, err := LoadTable(path, "label")
		if (d == nil) == (err == nil) {
			t.Fatalf("expected a dataset or an error, got %v and %v", d, err)
		}
		if d != nil {
			if verr := d.Validate(); verr != nil {
				t.Fatalf("LoadTable returned an invalid dataset: %v", verr)
			}
		}
	})
}

// A sparse file of 100 GiB is read a message at a time, never whole: its
// first message, all zeros, is an error.
func TestLoadTableSparseFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse.arrows")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}); err != nil { // 65,535 metadata bytes
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 30); err != nil {
		t.Skipf("no sparse files here: %v", err)
	}
	f.Close()
	_, err = LoadTable(path, "label")
	wantErr(t, err, "sparse.arrows (IPC stream format): message 0 at byte 0: malformed metadata")
}

// The dataset's own arrays are counted against the budget with what Arrow
// holds: a table whose rows do not fit is refused with an error.
func TestLoadTableRowsOverBudget(t *testing.T) {
	budget := memoryBudget
	memoryBudget = func() int64 { return 1 << 20 }
	defer func() { memoryBudget = budget }()
	schema := arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int8}, {Name: "x", Type: arrow.PrimitiveTypes.Int8}}, nil)
	fill := func(rb *array.RecordBuilder) {
		for range 50_000 { // 400 kB as float32 features and int32 labels
			rb.Field(0).(*array.Int8Builder).Append(1)
			rb.Field(1).(*array.Int8Builder).Append(2)
		}
	}
	path := filepath.Join(t.TempDir(), "rows.arrows")
	writeFile(t, path, buildIPC(t, false, schema, fill, fill, fill))
	_, err := LoadTable(path, "label")
	wantErr(t, err, "rows.arrows: record batch after row ", ": 50000 rows of 1 features: the file asks for 400000 bytes", "more than the 1048576-byte dataset budget (half the memory this process can have)")
}

func TestBudgetAllocator(t *testing.T) {
	a := newBudgetAllocator(100)
	b := a.Allocate(60)
	if len(b) != 60 || a.held.Load() != 60 {
		t.Fatalf("Allocate(60): len %d, held %d", len(b), a.held.Load())
	}
	func() {
		defer func() {
			e, ok := recover().(*overBudget)
			if !ok || e.want != 50 || e.held != 60 || e.limit != 100 {
				t.Errorf("Allocate(50) past the limit: recovered %v; want *overBudget{50, 60, 100}", e)
			}
		}()
		a.Allocate(50)
	}()
	b = a.Reallocate(90, b)
	if a.held.Load() != 90 {
		t.Fatalf("after Reallocate(90): held %d", a.held.Load())
	}
	a.Free(b)
	if err := a.claim(100); err != nil || a.held.Load() != 100 {
		t.Fatalf("claim(100) after Free: %v, held %d", err, a.held.Load())
	}
	if err := a.claim(1); err == nil {
		t.Fatal("claim(1) past the limit: no error")
	}
}
