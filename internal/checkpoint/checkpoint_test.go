package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoundTripAndDamage(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, ErrNone) {
		t.Fatalf("empty dir: %v, want ErrNone", err)
	}
	s := &State{NextRound: 7, Version: 7, Job: map[string]string{"model": "2nn"}, Accuracy: 0.9, Params: []float32{1, -2, 3.5}, Optimizer: []byte{9, 8}}
	if err := Save(dir, s); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.NextRound != 7 || got.Params[2] != 3.5 || string(got.Optimizer) != "\x09\x08" || got.Job["model"] != "2nn" {
		t.Fatalf("round trip gave %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("state dir holds %d files after save, want only the checkpoint", len(entries))
	}
	path := filepath.Join(dir, FileName)
	good, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"truncated", good[:len(good)-5], "checksum"},
		{"flipped", append(append([]byte{}, good[:20]...), append([]byte{good[20] ^ 1}, good[21:]...)...), "checksum"},
		{"magic", append([]byte("NOTACKPT"), good[8:]...), "magic"},
		{"tiny", good[:5], "shorter"},
	} {
		if err := os.WriteFile(path, tc.b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("%s: %v, want a corrupt-checkpoint error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestMismatch(t *testing.T) {
	if err := Mismatch(map[string]string{"a": "1"}, map[string]string{"a": "1"}); err != nil {
		t.Fatal(err)
	}
	err := Mismatch(map[string]string{"model": "2nn", "seed": "1"}, map[string]string{"model": "logreg", "seed": "1"})
	if err == nil || !strings.Contains(err.Error(), `model: checkpoint "2nn", now "logreg"`) {
		t.Fatalf("mismatch error %v", err)
	}
}
