package data

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte)
// and the number of dimensions.
const (
	idxMagicImages uint32 = 0x00000803
	idxMagicLabels uint32 = 0x00000801
)

// maxIDXPrealloc caps how much memory is reserved up front from a header's
// claimed size; beyond it the buffer grows only as real data arrives, so a
// lying header cannot force a large allocation.
const maxIDXPrealloc = 64 << 20

// IDXImages is a stack of N greyscale images of Rows×Cols unsigned bytes, as
// stored in an IDX3 file. Pixels holds N*Rows*Cols bytes, image-major then
// row-major.
type IDXImages struct {
	N, Rows, Cols int
	Pixels        []uint8
}

// ReadIDXImages reads an IDX3 unsigned-byte image file (magic 0x00000803). The
// file is gunzipped if its name ends in ".gz" or it starts with the gzip magic
// bytes. The header's dimensions must be non-zero (N may be zero) and must
// match the payload length exactly.
func ReadIDXImages(path string) (*IDXImages, error) {
	var out *IDXImages
	err := readIDX(path, idxMagicImages, 3, func(dims []uint32, r io.Reader) error {
		if dims[1] == 0 || dims[2] == 0 {
			return fmt.Errorf("expected non-zero image dimensions, header says %d×%d", dims[1], dims[2])
		}
		px, err := readIDXPayload(r, dims)
		if err != nil {
			return err
		}
		out = &IDXImages{N: int(dims[0]), Rows: int(dims[1]), Cols: int(dims[2]), Pixels: px}
		return nil
	})
	return out, err
}

// ReadIDXLabels reads an IDX1 unsigned-byte label file (magic 0x00000801),
// gunzipping it like ReadIDXImages. The label count in the header must match
// the payload length exactly. Label values are not range-checked here.
func ReadIDXLabels(path string) ([]uint8, error) {
	var out []uint8
	err := readIDX(path, idxMagicLabels, 1, func(dims []uint32, r io.Reader) error {
		var err error
		out, err = readIDXPayload(r, dims)
		return err
	})
	return out, err
}

// readIDX opens path, checks the magic number and reads ndims big-endian
// dimension sizes, then hands the rest of the stream to body. Every error
// names the file.
func readIDX(path string, magic uint32, ndims int, body func(dims []uint32, r io.Reader) error) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading IDX file: %w", err) // *PathError names the file
	}
	defer f.Close()
	defer func() {
		if err != nil {
			err = fmt.Errorf("IDX file %s: %w", path, err)
		}
	}()

	br := bufio.NewReaderSize(f, 1<<16)
	var r io.Reader = br
	head, _ := br.Peek(2)
	if strings.HasSuffix(path, ".gz") || bytes.Equal(head, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("expected gzip data: %w", err)
		}
		defer zr.Close()
		r = zr
	}

	hdr := make([]byte, 4+4*ndims)
	if n, err := io.ReadFull(r, hdr); err != nil {
		return fmt.Errorf("truncated header: expected %d bytes, got %d: %w", len(hdr), n, err)
	}
	if got := binary.BigEndian.Uint32(hdr); got != magic {
		return fmt.Errorf("wrong magic number: expected 0x%08x (unsigned bytes, %d dimension(s)), got 0x%08x",
			magic, ndims, got)
	}
	dims := make([]uint32, ndims)
	for i := range dims {
		dims[i] = binary.BigEndian.Uint32(hdr[4+4*i:])
	}
	return body(dims, r)
}

// readIDXPayload reads exactly the product of dims bytes from r and checks
// that nothing follows.
func readIDXPayload(r io.Reader, dims []uint32) ([]byte, error) {
	const maxBytes = 1 << 48
	want := uint64(1)
	for _, d := range dims {
		if d != 0 && want > maxBytes/uint64(d) {
			return nil, fmt.Errorf("header dimensions %v describe more than 2^48 bytes", dims)
		}
		want *= uint64(d)
	}
	var buf bytes.Buffer
	buf.Grow(int(min(want, maxIDXPrealloc)))
	n, err := io.Copy(&buf, io.LimitReader(r, int64(want)))
	if err != nil {
		return nil, fmt.Errorf("reading %d data bytes for dimensions %v: %w", want, dims, err)
	}
	if uint64(n) < want {
		return nil, fmt.Errorf("truncated: header dimensions %v need %d data bytes, file has %d",
			dims, want, n)
	}
	extra, err := io.Copy(io.Discard, r)
	if err != nil {
		return nil, fmt.Errorf("reading past the %d data bytes for dimensions %v: %w", want, dims, err)
	}
	if extra > 0 {
		return nil, fmt.Errorf("header dimensions %v need %d data bytes, file has %d (%d extra)",
			dims, want, want+uint64(extra), extra)
	}
	return buf.Bytes(), nil
}

// MNIST geometry.
const (
	mnistSide    = 28
	mnistDim     = mnistSide * mnistSide
	mnistClasses = 10
)

// LoadMNIST reads the four MNIST IDX files from dir (train-images-idx3-ubyte,
// train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
// each either gzipped with a ".gz" suffix or plain). Pixels are scaled to
// [0,1] as p/255; Dim is 784 and Classes 10. It checks that images are 28×28,
// that each image file has as many images as its label file has labels, and
// that every label is in 0..9.
func LoadMNIST(dir string) (train, test *Dataset, err error) {
	train, err = loadMNISTSplit(dir, "train")
	if err != nil {
		return nil, nil, err
	}
	test, err = loadMNISTSplit(dir, "t10k")
	if err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

// loadMNISTSplit loads one of the "train" or "t10k" image/label file pairs.
func loadMNISTSplit(dir, prefix string) (*Dataset, error) {
	imgPath, err := findMNISTFile(dir, prefix+"-images-idx3-ubyte")
	if err != nil {
		return nil, err
	}
	lblPath, err := findMNISTFile(dir, prefix+"-labels-idx1-ubyte")
	if err != nil {
		return nil, err
	}
	img, err := ReadIDXImages(imgPath)
	if err != nil {
		return nil, fmt.Errorf("MNIST %s images: %w", prefix, err)
	}
	if img.Rows != mnistSide || img.Cols != mnistSide {
		return nil, fmt.Errorf("MNIST %s images: %s: expected %d×%d images, got %d×%d",
			prefix, imgPath, mnistSide, mnistSide, img.Rows, img.Cols)
	}
	lbl, err := ReadIDXLabels(lblPath)
	if err != nil {
		return nil, fmt.Errorf("MNIST %s labels: %w", prefix, err)
	}
	if len(lbl) != img.N {
		return nil, fmt.Errorf("MNIST %s: expected as many labels as images, got %d images in %s and %d labels in %s",
			prefix, img.N, imgPath, len(lbl), lblPath)
	}

	var scale [256]float32
	for p := range scale {
		scale[p] = float32(p) / 255
	}
	d := &Dataset{
		X:       make([]float32, len(img.Pixels)),
		Y:       make([]int32, len(lbl)),
		Dim:     mnistDim,
		Classes: mnistClasses,
	}
	for i, p := range img.Pixels {
		d.X[i] = scale[p]
	}
	for i, l := range lbl {
		if l >= mnistClasses {
			return nil, fmt.Errorf("MNIST %s labels: %s: label %d at index %d, expected 0..%d",
				prefix, lblPath, l, i, mnistClasses-1)
		}
		d.Y[i] = int32(l)
	}
	return d, nil
}

// findMNISTFile returns dir/name.gz if it exists, else dir/name if that
// exists, else an error naming both.
func findMNISTFile(dir, name string) (string, error) {
	gz := filepath.Join(dir, name+".gz")
	plain := filepath.Join(dir, name)
	for _, p := range []string{gz, plain} {
		_, err := os.Stat(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("MNIST: %w", err)
		}
	}
	return "", fmt.Errorf("MNIST: expected %s or %s, found neither: %w", gz, plain, os.ErrNotExist)
}
