package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestLoadMNIST(t *testing.T) {
	train, test := mnist(t)
	tests := []struct {
		name       string
		d          *Dataset
		rows       int
		firstLabel int32
	}{
		{"train", train, 60000, 5},
		{"test", test, 10000, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.d
			if d.Len() != tc.rows || d.Dim != 784 || d.Classes != 10 {
				t.Fatalf("got %d rows, Dim %d, Classes %d; expected %d, 784, 10", d.Len(), d.Dim, d.Classes, tc.rows)
			}
			if err := d.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if d.Y[0] != tc.firstLabel {
				t.Errorf("first label %d, expected %d", d.Y[0], tc.firstLabel)
			}
			lo, hi := float32(1), float32(0)
			for _, v := range d.X {
				lo, hi = min(lo, v), max(hi, v)
			}
			if lo != 0 || hi != 1 {
				t.Errorf("pixel range [%v, %v], expected [0, 1]", lo, hi)
			}
			var counts [10]int
			for _, y := range d.Y {
				counts[y]++
			}
			for c, n := range counts {
				if n == 0 {
					t.Errorf("label %d never occurs", c)
				}
			}
			// Pixel 0 of every MNIST image is background.
			if r := d.Row(0); len(r) != 784 || cap(r) != 784 || r[0] != 0 {
				t.Errorf("Row(0): len %d cap %d first %v; expected 784, 784, 0", len(r), cap(r), r[0])
			}
		})
	}
	if got, want := train.Y[:10], []int32{5, 0, 4, 1, 9, 2, 1, 3, 1, 4}; !slices.Equal(got, want) {
		t.Errorf("first train labels %v, expected %v", got, want)
	}
}

// idxBytes builds an IDX file: magic, big-endian dims, then payload.
func idxBytes(magic uint32, dims []uint32, payload []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, magic)
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(payload)
	return b.Bytes()
}

func gzipBytes(t *testing.T, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadIDXImages(t *testing.T) {
	dir := t.TempDir()
	px := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	good := idxBytes(idxMagicImages, []uint32{3, 2, 2}, px)
	validGz := gzipBytes(t, good)
	tests := []struct {
		name string
		file string
		data []byte // nil: do not create the file
		want []string
	}{
		{name: "plain", file: "img", data: good},
		{name: "gzip by name", file: "img.gz", data: validGz},
		{name: "gzip by magic", file: "img-no-suffix", data: validGz},
		{name: "missing file", file: "nope.gz", want: []string{"nope.gz", "no such file"}},
		{name: "truncated payload", file: "short", data: good[:len(good)-5],
			want: []string{"short", "truncated", "need 12 data bytes, file has 7"}},
		{name: "truncated gzip", file: "short.gz", data: validGz[:len(validGz)-12],
			want: []string{"short.gz", "unexpected EOF"}},
		{name: "truncated header", file: "hdr", data: good[:9],
			want: []string{"hdr", "truncated header: expected 16 bytes, got 9"}},
		{name: "wrong magic", file: "magic", data: idxBytes(idxMagicLabels, []uint32{3, 2, 2}, px),
			want: []string{"magic", "wrong magic number: expected 0x00000803", "got 0x00000801"}},
		{name: "dims do not match length", file: "long", data: idxBytes(idxMagicImages, []uint32{2, 2, 2}, px),
			want: []string{"long", "need 8 data bytes, file has 12 (4 extra)"}},
		{name: "zero image size", file: "zero", data: idxBytes(idxMagicImages, []uint32{3, 0, 2}, nil),
			want: []string{"zero", "non-zero image dimensions", "0×2"}},
		{name: "huge dims", file: "huge", data: idxBytes(idxMagicImages, []uint32{1 << 20, 1 << 30, 1 << 31}, px),
			want: []string{"huge", "more than 2^48 bytes"}},
		{name: "not gzip", file: "bad.gz", data: good,
			want: []string{"bad.gz", "expected gzip data"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			if tc.data != nil {
				writeFile(t, path, tc.data)
			}
			img, err := ReadIDXImages(path)
			if tc.want != nil {
				wantErr(t, err, append(tc.want, path)...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.N != 3 || img.Rows != 2 || img.Cols != 2 || !bytes.Equal(img.Pixels, px) {
				t.Fatalf("got %+v, expected 3×2×2 with pixels %v", img, px)
			}
		})
	}
}

func TestReadIDXLabels(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{name: "ok", data: idxBytes(idxMagicLabels, []uint32{4}, []byte{3, 1, 4, 1})},
		{name: "wrong magic", data: idxBytes(idxMagicImages, []uint32{4}, []byte{3, 1, 4, 1}),
			want: []string{"wrong magic number: expected 0x00000801", "got 0x00000803"}},
		{name: "truncated", data: idxBytes(idxMagicLabels, []uint32{5}, []byte{3, 1, 4, 1}),
			want: []string{"truncated", "need 5 data bytes, file has 4"}},
		{name: "too long", data: idxBytes(idxMagicLabels, []uint32{3}, []byte{3, 1, 4, 1}),
			want: []string{"need 3 data bytes, file has 4 (1 extra)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			writeFile(t, path, tc.data)
			got, err := ReadIDXLabels(path)
			if tc.want != nil {
				wantErr(t, err, append(tc.want, path)...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, []byte{3, 1, 4, 1}) {
				t.Fatalf("got %v, expected [3 1 4 1]", got)
			}
		})
	}
}

func TestLoadMNISTErrors(t *testing.T) {
	img := func(n int) []byte { return idxBytes(idxMagicImages, []uint32{uint32(n), 28, 28}, make([]byte, n*784)) }
	lbl := func(ls ...byte) []byte { return idxBytes(idxMagicLabels, []uint32{uint32(len(ls))}, ls) }
	tests := []struct {
		name  string
		files map[string][]byte
		want  []string
	}{
		{name: "empty dir", files: map[string][]byte{},
			want: []string{"train-images-idx3-ubyte.gz", "found neither"}},
		{name: "count mismatch", files: map[string][]byte{
			"train-images-idx3-ubyte": img(2), "train-labels-idx1-ubyte": lbl(1, 2, 3),
		}, want: []string{"as many labels as images", "2 images", "3 labels"}},
		{name: "label out of range", files: map[string][]byte{
			"train-images-idx3-ubyte": img(2), "train-labels-idx1-ubyte": lbl(1, 10),
		}, want: []string{"label 10 at index 1", "expected 0..9"}},
		{name: "wrong image size", files: map[string][]byte{
			"train-images-idx3-ubyte": idxBytes(idxMagicImages, []uint32{1, 2, 2}, make([]byte, 4)),
			"train-labels-idx1-ubyte": lbl(1),
		}, want: []string{"expected 28×28 images, got 2×2"}},
		{name: "missing test split", files: map[string][]byte{
			"train-images-idx3-ubyte": img(2), "train-labels-idx1-ubyte": lbl(1, 2),
		}, want: []string{"t10k-images-idx3-ubyte"}},
		{name: "ok", files: map[string][]byte{
			"train-images-idx3-ubyte": img(2), "train-labels-idx1-ubyte": lbl(1, 2),
			"t10k-images-idx3-ubyte.gz": gzipBytes(t, img(1)), "t10k-labels-idx1-ubyte": lbl(9),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, b := range tc.files {
				writeFile(t, filepath.Join(dir, name), b)
			}
			train, test, err := LoadMNIST(dir)
			if tc.want != nil {
				wantErr(t, err, tc.want...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if train.Len() != 2 || test.Len() != 1 || test.Y[0] != 9 {
				t.Fatalf("got %d train rows, %d test rows, test label %v", train.Len(), test.Len(), test.Y)
			}
		})
	}
}
