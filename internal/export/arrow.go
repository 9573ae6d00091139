package export

import (
	"fmt"
	"io"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"fedgather/internal/model"
)

// Arrow column names of an exported model.
const (
	// ArrowName is the utf8 column holding the tensor's state-dict name.
	ArrowName = "name"
	// ArrowShape is the list<int64> column holding the tensor's shape.
	ArrowShape = "shape"
	// ArrowValues is the list<float32> column holding the tensor's values,
	// row-major.
	ArrowValues = "values"
)

// arrowSchema is the schema of an exported model: one row per tensor, none
// of the columns or list elements nullable, the metadata as schema
// metadata.
func arrowSchema(md map[string]string) *arrow.Schema {
	meta := arrow.MetadataFrom(md) // keys sorted: the same bytes every time
	return arrow.NewSchema([]arrow.Field{
		{Name: ArrowName, Type: arrow.BinaryTypes.String},
		{Name: ArrowShape, Type: arrow.ListOfNonNullable(arrow.PrimitiveTypes.Int64)},
		{Name: ArrowValues, Type: arrow.ListOfNonNullable(arrow.PrimitiveTypes.Float32)},
	}, &meta)
}

// WriteArrow writes params, the flat parameter vector of spec, to w as an
// Arrow IPC file (the random-access format, uncompressed) holding one
// record batch with one row per tensor, in parameter order:
//
//	name   utf8           "fc1.weight", "fc1.bias", "fc2.weight", …
//	shape  list<int64>    [out, in] for a weight, [out] for a bias
//	values list<float32>  the tensor's values, row-major
//
// The schema metadata holds the same entries as a safetensors file's
// "__metadata__" (see the Key constants). Non-finite parameters are
// refused.
func WriteArrow(w io.Writer, spec model.Spec, params []float32, meta Meta) error {
	if err := checkParams(spec, params); err != nil {
		return err
	}
	mem := memory.NewGoAllocator()
	schema := arrowSchema(meta.entries(spec))
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	names := b.Field(0).(*array.StringBuilder)
	shapes := b.Field(1).(*array.ListBuilder)
	shapeVals := shapes.ValueBuilder().(*array.Int64Builder)
	values := b.Field(2).(*array.ListBuilder)
	floatVals := values.ValueBuilder().(*array.Float32Builder)
	floatVals.Reserve(len(params))
	for _, t := range layout(spec) {
		names.Append(t.name)
		shapes.Append(true)
		for _, d := range t.shape {
			shapeVals.Append(int64(d))
		}
		values.Append(true)
		floatVals.AppendValues(params[t.off:t.off+t.size()], nil)
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	fw, err := ipc.NewFileWriter(w, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err != nil {
		return fmt.Errorf("export: arrow: %w", err)
	}
	if err := fw.Write(rec); err != nil {
		fw.Close()
		return fmt.Errorf("export: write arrow: %w", err)
	}
	if err := fw.Close(); err != nil {
		return fmt.Errorf("export: write arrow: %w", err)
	}
	return nil
}

// ReadArrow reads an Arrow IPC file written by WriteArrow and checks it
// against spec: the schema's columns and types, one row per expected
// tensor (no missing, extra or repeated names, no nulls), every shape, the
// value counts, and finite values. It returns the flat parameter vector
// and the metadata.
func ReadArrow(r ipc.ReadAtSeeker, spec model.Spec) ([]float32, Meta, error) {
	fr, err := ipc.NewFileReader(r, ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		return nil, Meta{}, fmt.Errorf("%w: arrow: %w", ErrFormat, err)
	}
	defer fr.Close()
	schema := fr.Schema()
	if err := checkArrowSchema(schema); err != nil {
		return nil, Meta{}, err
	}
	meta, err := parseMeta(schema.Metadata().ToMap())
	if err != nil {
		return nil, Meta{}, err
	}

	// Collect the rows, then check names before shapes and values, as the
	// safetensors reader does.
	type row struct {
		shape  []int
		values []float32
	}
	rows := map[string]row{}
	var have []string
	for i := 0; i < fr.NumRecords(); i++ {
		rec, err := fr.RecordBatch(i)
		if err != nil {
			return nil, Meta{}, fmt.Errorf("%w: arrow record batch %d: %w", ErrFormat, i, err)
		}
		names := rec.Column(0).(*array.String)
		shapes := rec.Column(1).(*array.List)
		values := rec.Column(2).(*array.List)
		shapeVals := shapes.ListValues().(*array.Int64)
		floatVals := values.ListValues().(*array.Float32)
		if names.NullN() > 0 || shapes.NullN() > 0 || values.NullN() > 0 || shapeVals.NullN() > 0 || floatVals.NullN() > 0 {
			return nil, Meta{}, fmt.Errorf("%w: arrow record batch %d holds nulls", ErrFormat, i)
		}
		for r := 0; r < int(rec.NumRows()); r++ {
			name := names.Value(r)
			if _, dup := rows[name]; dup {
				return nil, Meta{}, fmt.Errorf("%w: arrow: tensor %q appears twice", ErrFormat, name)
			}
			have = append(have, name)
			lo, hi := shapes.ValueOffsets(r)
			var rw row
			for _, d := range shapeVals.Int64Values()[lo:hi] {
				rw.shape = append(rw.shape, int(d))
			}
			lo, hi = values.ValueOffsets(r)
			rw.values = slices.Clone(floatVals.Float32Values()[lo:hi]) // the batch is the reader's
			rows[name] = rw
		}
	}
	params, err := assemble(spec, have, func(name string) []int { return rows[name].shape }, meta, func(t tensorShape, dst []float32) error {
		v := rows[t.name].values
		if len(v) != t.size() {
			return fmt.Errorf("%w: tensor %s has %d values; shape %v needs %d", ErrFormat, t.name, len(v), t.shape, t.size())
		}
		copy(dst, v)
		return nil
	})
	if err != nil {
		return nil, Meta{}, err
	}
	return params, meta, nil
}

// checkArrowSchema requires exactly the columns WriteArrow writes.
func checkArrowSchema(s *arrow.Schema) error {
	want := arrowSchema(nil)
	if s.NumFields() != want.NumFields() {
		return fmt.Errorf("%w: arrow schema has %d columns, expected %d (%s)", ErrFormat, s.NumFields(), want.NumFields(), want)
	}
	for i, f := range want.Fields() {
		g := s.Field(i)
		if g.Name != f.Name || !arrow.TypeEqual(g.Type, f.Type) {
			return fmt.Errorf("%w: arrow column %d is %s: %s, expected %s: %s", ErrFormat, i, g.Name, g.Type, f.Name, f.Type)
		}
	}
	return nil
}
