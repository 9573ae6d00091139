package data

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// LoadTable loads a user's labelled table from path, choosing the format by
// extension:
//
//   - .arrow, .arrows, .ipc, .feather: Arrow IPC, file format (Feather v2) or
//     stream format, told apart by the file's "ARROW1" magic bytes;
//   - .parquet: Parquet, read through pqarrow;
//   - .csv: comma-separated text with a required header row.
//
// The column named labelCol holds the labels: integer-valued (an integer
// type, a float with integral values, or in CSV a decimal integer), no nulls,
// each ≥ 0; Classes is the largest label + 1. Every other column is a
// feature, in column order, converted to float32: any integer or float
// column, or in Arrow and Parquet a list column of floats whose rows all have
// the same length (such as the fixed_size_list<float32> "features" column
// written by EncodeShard), which contributes that many features. Nulls, empty
// CSV fields and non-finite values are errors naming the column and row.
//
// Malformed files give errors. An Arrow file's framing and metadata are
// checked message by message before Arrow's reader acts on them, as
// DecodeShard checks a shard's (see loadArrow). The readers allocate, and
// the dataset is counted, against a budget of half the memory the process
// can have (budgetAllocator), so a size that passes it is an error, not a
// crash; and a recover turns reader panics into errors too. Parquet
// metadata is not pre-checked: a deliberately crafted Parquet file can
// still make arrow-go allocate outside the budget or recurse without
// bound.
func LoadTable(path, labelCol string) (d *Dataset, err error) {
	defer func() { // last line of defence against reader panics on bad files
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("load table %s: malformed file (%v)", path, r)
		}
	}()
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".arrow", ".arrows", ".ipc", ".feather":
		return loadArrow(path, labelCol, newBudgetAllocator(memoryBudget()))
	case ".parquet":
		return loadParquet(path, labelCol, newBudgetAllocator(memoryBudget()))
	case ".csv":
		return loadCSV(path, labelCol)
	default:
		return nil, fmt.Errorf("load table %s: expected extension .arrow, .arrows, .ipc, .feather, .parquet or .csv, got %q", path, ext)
	}
}

// loadArrow reads an Arrow IPC file or stream. Arrow's reader trusts the
// lengths the metadata states, so it reads through a tableStream, which
// hands it each message only once the message has been read and checked;
// an IPC file is read through its stream section, in stream order.
func loadArrow(path, labelCol string, alloc *budgetAllocator) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load table: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load table: %w", err)
	}
	var head [8]byte
	n, _ := f.ReadAt(head[:], 0)
	format := "IPC stream format"
	off, size := int64(0), st.Size()
	switch {
	case string(head[:min(n, 6)]) == "ARROW1":
		format = "IPC file format"
		if off, size, err = ipcFileSection(f, st.Size()); err != nil {
			return nil, fmt.Errorf("Arrow file %s (%s): %w", path, format, err)
		}
	case n < 4 || binary.LittleEndian.Uint32(head[:]) != ipcContinuation:
		return nil, fmt.Errorf(`Arrow file %s: expected the IPC file format (magic "ARROW1") or stream format (continuation marker 0xffffffff), got %d bytes starting %q (the legacy pre-0.15 stream format, without the marker, is not supported)`,
			path, st.Size(), head[:n])
	}
	// Positions in errors are the file's: the section starts at off.
	src := &readerSource{r: bufio.NewReaderSize(io.NewSectionReader(f, off, size), 64<<10), off: off, left: size, alloc: alloc}
	ts := &tableStream{src: src}
	failed := func(err error) error {
		// The check's own error, or the budget's, not Arrow's rewording.
		if ts.err != nil {
			err = ts.err
		} else if ob := alloc.refused.Load(); ob != nil {
			err = ob
		}
		return fmt.Errorf("Arrow file %s (%s): %w", path, format, err)
	}
	sr, err := ipc.NewReader(ts, ipc.WithAllocator(alloc))
	if err != nil {
		return nil, failed(err)
	}
	defer sr.Release()
	tb, err := newTableBuilder("Arrow", path, sr.Schema(), labelCol, alloc)
	if err != nil {
		return nil, err
	}
	for sr.Next() {
		if err := tb.add(sr.RecordBatch()); err != nil {
			return nil, err
		}
	}
	if err := sr.Err(); err != nil || ts.err != nil {
		return nil, failed(fmt.Errorf("after %d rows: %w", tb.rows, err))
	}
	return tb.finish()
}

// tableStream is the io.Reader Arrow's stream reader reads a dataset file
// through. It reads one message at a time from src, checks it (nextMessage,
// then checkTableMessage), and only then passes its bytes on, so the reader
// never acts on a length that has not been checked, and at most one
// message is held, counted against the budget until Arrow has read it. The
// stream may end without its end-of-stream marker, as the Arrow format
// allows.
type tableStream struct {
	src     *readerSource
	msg     int
	batches int
	pending [][]byte // the checked message's parts not yet read
	done    bool
	err     error // the first check that failed
}

func (s *tableStream) Read(p []byte) (int, error) {
	if len(s.pending) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		m, parts, err := nextMessage(s.src, s.msg, maxTableMetadata, true)
		if err == nil && len(parts) == 3 {
			err = checkTableMessage(s.msg, &s.batches, m, parts[2], s.src.alloc.limit)
		}
		if err != nil {
			s.err = err
			return 0, err
		}
		if len(parts) < 3 { // the end-of-stream marker, or the end
			s.done = true
		}
		if len(parts) == 0 {
			return 0, io.EOF
		}
		s.pending = parts
		s.msg++
	}
	n := copy(p, s.pending[0])
	s.pending[0] = s.pending[0][n:]
	for len(s.pending) > 0 && len(s.pending[0]) == 0 {
		s.pending = s.pending[1:]
	}
	if len(s.pending) == 0 {
		s.pending = nil
		s.src.release() // Arrow has read the whole message: our copy is garbage
	}
	return n, nil
}

// readerSource is a byteSource reading a file section: take reads each
// message part into a new buffer, claimed from the dataset budget (a
// crafted length, or a sparse file, could name a body of any size up to the
// file's) until release.
type readerSource struct {
	r     io.Reader
	left  int64
	off   int64
	alloc *budgetAllocator
	taken int64 // claimed by take since the last release
}

func (s *readerSource) take(n int64) ([]byte, error) {
	if err := s.alloc.claim(n); err != nil {
		return nil, fmt.Errorf("reading a %d-byte message part: %w", n, err)
	}
	s.taken += n
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, err
	}
	s.off += n
	s.left -= n
	return b, nil
}

// release returns the claim on the parts taken since the last release,
// once nothing holds them.
func (s *readerSource) release() {
	_ = s.alloc.claim(-s.taken)
	s.taken = 0
}
func (s *readerSource) remain() int64 { return s.left }
func (s *readerSource) pos() int64    { return s.off }

// loadParquet reads a Parquet file through pqarrow.
func loadParquet(path, labelCol string, alloc *budgetAllocator) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load table: %w", err)
	}
	defer f.Close()
	tbl, err := pqarrow.ReadTable(context.Background(), f, parquet.NewReaderProperties(alloc), pqarrow.ArrowReadProperties{}, alloc)
	if err != nil {
		return nil, fmt.Errorf("Parquet file %s: %w", path, err)
	}
	defer tbl.Release()
	tb, err := newTableBuilder("Parquet", path, tbl.Schema(), labelCol, alloc)
	if err != nil {
		return nil, err
	}
	tr := array.NewTableReader(tbl, 1<<16)
	defer tr.Release()
	for tr.Next() {
		if err := tb.add(tr.RecordBatch()); err != nil {
			return nil, err
		}
	}
	if err := tr.Err(); err != nil {
		return nil, fmt.Errorf("Parquet file %s: after %d rows: %w", path, tb.rows, err)
	}
	return tb.finish()
}

// tableBuilder accumulates record batches of one Arrow schema into a Dataset.
type tableBuilder struct {
	format, path string
	schema       *arrow.Schema
	label        int   // schema index of the label column
	features     []int // schema indices of the feature columns, in order
	widths       []int // features per feature column; -1 until a list row is seen
	dim          int   // sum of widths, once all are known
	rows         int
	maxLabel     int64
	budget       *budgetAllocator // x and y are claimed from it
	x            []float32
	y            []int32
}

// newTableBuilder finds the label and feature columns of schema and checks
// their types.
func newTableBuilder(format, path string, schema *arrow.Schema, labelCol string, budget *budgetAllocator) (*tableBuilder, error) {
	tb := &tableBuilder{format: format, path: path, schema: schema, label: -1, maxLabel: -1, budget: budget}
	names := make([]string, schema.NumFields())
	for i, f := range schema.Fields() {
		names[i] = f.Name
	}
	for i, f := range schema.Fields() {
		if f.Name == labelCol {
			if tb.label >= 0 {
				return nil, fmt.Errorf("%s file %s has two columns named %q; expected one label column", format, path, labelCol)
			}
			if !isIntegerType(f.Type) && !isFloatType(f.Type) {
				return nil, fmt.Errorf("%s file %s: label column %q: expected an integer column, got %s", format, path, labelCol, f.Type)
			}
			tb.label = i
			continue
		}
		width, ok := featureWidth(f.Type)
		if !ok {
			return nil, fmt.Errorf("%s file %s: column %q: expected a numeric feature column (integer, float, or a list of floats), got %s",
				format, path, f.Name, f.Type)
		}
		tb.features = append(tb.features, i)
		tb.widths = append(tb.widths, width)
	}
	if tb.label < 0 {
		return nil, fmt.Errorf("%s file %s has no column %q; columns are: %s", format, path, labelCol, strings.Join(names, ", "))
	}
	if len(tb.features) == 0 {
		return nil, fmt.Errorf("%s file %s: expected at least one feature column besides %q, got none", format, path, labelCol)
	}
	tb.dim = -1
	return tb, nil
}

// featureWidth returns how many features a column of type t contributes
// (-1 for a variable-size list, whose width is read from the data), and
// whether t is a usable feature type at all.
func featureWidth(t arrow.DataType) (int, bool) {
	switch t := t.(type) {
	case *arrow.FixedSizeListType:
		return int(t.Len()), isFloatType(t.Elem())
	case *arrow.ListType:
		return -1, isFloatType(t.Elem())
	case *arrow.LargeListType:
		return -1, isFloatType(t.Elem())
	}
	return 1, isIntegerType(t) || isFloatType(t)
}

// isIntegerType reports whether t is a signed or unsigned integer type.
func isIntegerType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64:
		return true
	}
	return false
}

// isFloatType reports whether t is a 16-, 32- or 64-bit float type.
func isFloatType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.FLOAT16, arrow.FLOAT32, arrow.FLOAT64:
		return true
	}
	return false
}

// number is the set of Go element types of numeric Arrow arrays.
type number interface {
	~int8 | ~int16 | ~int32 | ~int64 | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~float32 | ~float64
}

// valuesOf returns an accessor over a typed values slice.
func valuesOf[T number](v []T) func(int) float64 {
	return func(i int) float64 { return float64(v[i]) }
}

// numbersOf returns an accessor for the i-th logical value of a numeric array
// as float64, or false if arr is not numeric.
func numbersOf(arr arrow.Array) (func(int) float64, bool) {
	switch a := arr.(type) {
	case *array.Int8:
		return valuesOf(a.Values()), true
	case *array.Int16:
		return valuesOf(a.Values()), true
	case *array.Int32:
		return valuesOf(a.Values()), true
	case *array.Int64:
		return valuesOf(a.Values()), true
	case *array.Uint8:
		return valuesOf(a.Values()), true
	case *array.Uint16:
		return valuesOf(a.Values()), true
	case *array.Uint32:
		return valuesOf(a.Values()), true
	case *array.Uint64:
		return valuesOf(a.Values()), true
	case *array.Float32:
		return valuesOf(a.Values()), true
	case *array.Float64:
		return valuesOf(a.Values()), true
	case *array.Float16:
		v := a.Values()
		return func(i int) float64 { return float64(v[i].Float32()) }, true
	}
	return nil, false
}

// add appends the rows of one record batch.
func (tb *tableBuilder) add(rec arrow.RecordBatch) error {
	if !rec.Schema().Equal(tb.schema) {
		return fmt.Errorf("%s file %s: record batch after row %d: expected schema %s, got %s", tb.format, tb.path, tb.rows, tb.schema, rec.Schema())
	}
	rows := int(rec.NumRows())
	if rows == 0 {
		return nil
	}
	if err := tb.resolveWidths(rec); err != nil {
		return err
	}

	// A row takes dim float32 features and an int32 label.
	perRow := 4*int64(tb.dim) + 4
	if int64(rows) > tb.budget.limit/perRow {
		return fmt.Errorf("%s file %s: record batch after row %d: %d rows of %d features would take more than the %d-byte dataset budget (%s)",
			tb.format, tb.path, tb.rows, rows, tb.dim, tb.budget.limit, budgetIs)
	}
	var err error
	if tb.y, err = grow(tb.budget, tb.y, rows); err == nil {
		tb.x, err = grow(tb.budget, tb.x, rows*tb.dim)
	}
	if err != nil {
		return fmt.Errorf("%s file %s: record batch after row %d: %d rows of %d features: %w", tb.format, tb.path, tb.rows, rows, tb.dim, err)
	}

	labels, ok := numbersOf(rec.Column(tb.label))
	if !ok {
		return fmt.Errorf("%s file %s: label column %q: expected a numeric array, got %T",
			tb.format, tb.path, tb.schema.Field(tb.label).Name, rec.Column(tb.label))
	}
	if n := rec.Column(tb.label).NullN(); n > 0 {
		return fmt.Errorf("%s file %s: label column %q: expected no nulls, got %d in rows %d..%d",
			tb.format, tb.path, tb.schema.Field(tb.label).Name, n, tb.rows, tb.rows+rows-1)
	}
	for r := range rows {
		y, err := checkLabel(labels(r))
		if err != nil {
			return fmt.Errorf("%s file %s: row %d, label column %q: %w", tb.format, tb.path, tb.rows+r, tb.schema.Field(tb.label).Name, err)
		}
		tb.maxLabel = max(tb.maxLabel, int64(y))
		tb.y = append(tb.y, y)
	}

	base := len(tb.x)
	tb.x = tb.x[:base+rows*tb.dim] // room grow made: zeros, each written below
	x := tb.x[base:]
	off := 0
	for j, ci := range tb.features {
		if err := tb.fillColumn(x, rec.Column(ci), ci, off, tb.widths[j], rows); err != nil {
			return err
		}
		off += tb.widths[j]
	}
	tb.rows += rows
	return nil
}

// grow returns s with room for n more elements. A larger array is claimed
// from b in full before it is made, and the old one released once copied,
// so that the count follows the memory the arrays take, growth included.
func grow[T int32 | float32](b *budgetAllocator, s []T, n int) ([]T, error) {
	if cap(s)-len(s) >= n {
		return s, nil
	}
	newCap := max(len(s)+n, cap(s)+cap(s)/4)
	if err := b.claim(4 * int64(newCap)); err != nil {
		return nil, err
	}
	t := make([]T, len(s), newCap)
	copy(t, s)
	_ = b.claim(-4 * int64(cap(s)))
	return t, nil
}

// resolveWidths learns the width of variable-size list columns from the
// first row seen and sets tb.dim.
func (tb *tableBuilder) resolveWidths(rec arrow.RecordBatch) error {
	if tb.dim >= 0 {
		return nil
	}
	dim := 0
	for j, ci := range tb.features {
		if tb.widths[j] < 0 {
			l, ok := rec.Column(ci).(array.ListLike)
			if !ok {
				return fmt.Errorf("%s file %s: column %q: expected a list array, got %T", tb.format, tb.path, tb.schema.Field(ci).Name, rec.Column(ci))
			}
			start, end := l.ValueOffsets(0)
			tb.widths[j] = int(end - start)
		}
		if tb.widths[j] <= 0 {
			return fmt.Errorf("%s file %s: column %q: expected non-empty feature lists, got length %d", tb.format, tb.path, tb.schema.Field(ci).Name, tb.widths[j])
		}
		dim += tb.widths[j]
	}
	tb.dim = dim
	return nil
}

// fillColumn writes column col (schema index ci, width w features starting at
// feature offset off) of rows rows into the row-major block x.
func (tb *tableBuilder) fillColumn(x []float32, col arrow.Array, ci, off, w, rows int) error {
	name := tb.schema.Field(ci).Name
	bad := func(row int, format string, args ...any) error {
		return fmt.Errorf("%s file %s: row %d, column %q: %s", tb.format, tb.path, tb.rows+row, name, fmt.Sprintf(format, args...))
	}
	if col.NullN() > 0 {
		for r := range rows {
			if col.IsNull(r) {
				return bad(r, "expected a number, got null")
			}
		}
	}
	put := func(r, k int, v float64) error {
		f := float32(v)
		if !isFinite32(f) {
			return bad(r, "feature %d: expected a finite float32 value, got %v", k, v)
		}
		x[r*tb.dim+off+k] = f
		return nil
	}
	if l, ok := col.(array.ListLike); ok {
		child := l.ListValues()
		vals, ok := numbersOf(child)
		if !ok {
			return bad(0, "expected list values of a float type, got %T", child)
		}
		for r := range rows {
			start, end := l.ValueOffsets(r)
			if int(end-start) != w {
				return bad(r, "expected a list of %d features (as in the first row), got %d", w, end-start)
			}
			for k := range w {
				i := int(start) + k
				if child.IsNull(i) {
					return bad(r, "feature %d: expected a number, got null", k)
				}
				if err := put(r, k, vals(i)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	vals, ok := numbersOf(col)
	if !ok {
		return bad(0, "expected a numeric array, got %T", col)
	}
	for r := range rows {
		if err := put(r, 0, vals(r)); err != nil {
			return err
		}
	}
	return nil
}

// checkLabel converts a label value to int32, requiring a non-negative
// integer below math.MaxInt32 (so that Classes = max+1 fits an int32 too).
func checkLabel(v float64) (int32, error) {
	if v != math.Trunc(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("expected an integer label, got %v", v)
	}
	if v < 0 || v >= math.MaxInt32 {
		return 0, fmt.Errorf("expected a label in [0, %d), got %v", math.MaxInt32, v)
	}
	return int32(v), nil
}

// finish returns the accumulated dataset.
func (tb *tableBuilder) finish() (*Dataset, error) {
	if tb.rows == 0 {
		return nil, fmt.Errorf("%s file %s: expected at least one row, got none", tb.format, tb.path)
	}
	d := &Dataset{X: tb.x, Y: tb.y, Dim: tb.dim, Classes: int(tb.maxLabel) + 1}
	if err := d.Validate(); err != nil { // cheap insurance: the checks above should make this unreachable
		return nil, fmt.Errorf("%s file %s: %w", tb.format, tb.path, err)
	}
	return d, nil
}

// loadCSV reads a CSV file with a header row; every field is parsed as a
// number.
func loadCSV(path, labelCol string) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load table: %w", err)
	}
	defer f.Close()
	cr := csv.NewReader(f)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("CSV file %s: expected a header row, got an empty file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("CSV file %s: reading header row: %w", path, err)
	}
	header = append([]string(nil), header...)
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // byte-order mark
	}
	label := -1
	for i, h := range header {
		header[i] = strings.TrimSpace(h)
		if header[i] == labelCol {
			if label >= 0 {
				return nil, fmt.Errorf("CSV file %s has two columns named %q; expected one label column", path, labelCol)
			}
			label = i
		}
	}
	if label < 0 {
		return nil, fmt.Errorf("CSV file %s has no column %q; columns are: %s", path, labelCol, strings.Join(header, ", "))
	}
	dim := len(header) - 1
	if dim == 0 {
		return nil, fmt.Errorf("CSV file %s: expected at least one feature column besides %q, got none", path, labelCol)
	}

	d := &Dataset{Dim: dim}
	maxLabel := int32(-1)
	for row := 0; ; row++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil { // *csv.ParseError names the line, including wrong field counts
			return nil, fmt.Errorf("CSV file %s: %w", path, err)
		}
		for i, field := range rec {
			field = strings.TrimSpace(field)
			if i == label {
				y, err := parseCSVLabel(field)
				if err != nil {
					return nil, fmt.Errorf("CSV file %s: data row %d, column %q: %w", path, row+1, header[i], err)
				}
				maxLabel = max(maxLabel, y)
				d.Y = append(d.Y, y)
				continue
			}
			v, err := strconv.ParseFloat(field, 32)
			if err != nil || !isFinite32(float32(v)) {
				return nil, fmt.Errorf("CSV file %s: data row %d, column %q: expected a finite number, got %q",
					path, row+1, header[i], field)
			}
			d.X = append(d.X, float32(v))
		}
	}
	if len(d.Y) == 0 {
		return nil, fmt.Errorf("CSV file %s: expected at least one data row after the header, got none", path)
	}
	d.Classes = int(maxLabel) + 1
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("CSV file %s: %w", path, err)
	}
	return d, nil
}

// parseCSVLabel parses a non-negative integer label such as "3" or "3.0".
func parseCSVLabel(s string) (int32, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return checkLabel(float64(n))
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("expected an integer label, got %q", s)
	}
	return checkLabel(v)
}
