// Package checkpoint saves and restores the aggregator's state between
// rounds, so a killed aggregator resumes at the next round.
//
// A checkpoint is one file, written atomically: to a temporary file in the
// same directory, fsynced, renamed over the old one, and the directory
// fsynced. Its layout (integers little-endian):
//
//	8 bytes  magic "FGCKPT01"
//	4 bytes  header length H
//	H bytes  JSON header (State without the tensors)
//	4·P      model parameters, float32
//	S bytes  server-optimiser state
//	4 bytes  CRC-32 (Castagnoli) of everything before it
package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"fedgather/internal/atomicfile"
)

// FileName is the checkpoint's name inside the state directory.
const FileName = "checkpoint.bin"

const magic = "FGCKPT01"

// ErrNone is returned by Load when the directory holds no checkpoint.
var ErrNone = errors.New("no checkpoint")

// State is what the aggregator needs to resume.
type State struct {
	NextRound int               `json:"next_round"` // the round to run next
	Version   int               `json:"version"`    // model version of Params
	Job       map[string]string `json:"job"`        // settings that must match on resume
	Accuracy  float64           `json:"accuracy"`   // test accuracy of Params
	Loss      float64           `json:"loss"`       // test loss of Params
	Seconds   float64           `json:"seconds"`    // training wall time so far
	NParams   int               `json:"params"`
	NOpt      int               `json:"optimizer_bytes"`

	Params    []float32 `json:"-"`
	Optimizer []byte    `json:"-"`
}

var table = crc32.MakeTable(crc32.Castagnoli)

// Save writes s into dir atomically, creating dir if needed.
func Save(dir string, s *State) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	s.NParams, s.NOpt = len(s.Params), len(s.Optimizer)
	h, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode checkpoint header: %w", err)
	}
	b := make([]byte, 0, 8+4+len(h)+4*len(s.Params)+len(s.Optimizer)+4)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	for _, x := range s.Params {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	b = append(b, s.Optimizer...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, table))

	err = atomicfile.Write(filepath.Join(dir, FileName), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

// Load reads the checkpoint in dir. It returns ErrNone when there is none;
// a damaged file is an error naming the file and what is wrong.
func Load(dir string) (*State, error) {
	path := filepath.Join(dir, FileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("checkpoint %s is corrupt: %s", path, fmt.Sprintf(format, a...))
	}
	if len(b) < len(magic)+8 {
		return nil, bad("%d bytes, shorter than the smallest checkpoint", len(b))
	}
	if string(b[:8]) != magic {
		return nil, bad("magic %q, want %q", b[:8], magic)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, table); got != sum {
		return nil, bad("checksum %08x, the file says %08x (truncated or modified)", got, sum)
	}
	hl := int(binary.LittleEndian.Uint32(b[8:12]))
	if hl > len(body)-12 {
		return nil, bad("header length %d exceeds the file", hl)
	}
	var s State
	if err := json.Unmarshal(body[12:12+hl], &s); err != nil {
		return nil, bad("header: %v", err)
	}
	rest := body[12+hl:]
	if s.NParams < 0 || s.NOpt < 0 || 4*s.NParams+s.NOpt != len(rest) {
		return nil, bad("header announces %d parameters and %d optimiser bytes, %d bytes follow", s.NParams, s.NOpt, len(rest))
	}
	s.Params = make([]float32, s.NParams)
	for i := range s.Params {
		s.Params[i] = math.Float32frombits(binary.LittleEndian.Uint32(rest[4*i:]))
	}
	s.Optimizer = append([]byte(nil), rest[4*s.NParams:]...)
	return &s, nil
}

// Mismatch compares the job settings of a checkpoint with the current ones
// and returns an error listing every difference, or nil.
func Mismatch(saved, now map[string]string) error {
	keys := make(map[string]bool)
	for k := range saved {
		keys[k] = true
	}
	for k := range now {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if saved[k] != now[k] {
			diffs = append(diffs, fmt.Sprintf("%s: checkpoint %q, now %q", k, saved[k], now[k]))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	return fmt.Errorf("checkpoint was written by a different job (%s); use another -state directory or the same settings", strings.Join(diffs, "; "))
}
