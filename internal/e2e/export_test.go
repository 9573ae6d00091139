package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"fedgather/internal/export"
	"fedgather/internal/model"
)

// systemPython is Debian's interpreter, which has python3-torch and
// python3-numpy; the python3 first on PATH may be another one without them.
const systemPython = "/usr/bin/python3"

// jobRE matches the job's start line and captures its round-0 accuracy.
var jobRE = regexp.MustCompile(`^job: (\S+), .*; round 0 accuracy ([0-9.]+)$`)

// requireTorch skips the test when systemPython cannot import torch and
// numpy, or fails it when FEDGATHER_REQUIRE_SYSTEM=1 (scripts/test) says
// they must be there.
func requireTorch(t *testing.T) {
	t.Helper()
	out, err := exec.Command(systemPython, "-c", "import torch, numpy").CombinedOutput()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("%s cannot import torch and numpy (install python3-torch python3-numpy): %v %s", systemPython, err, bytes.TrimSpace(out))
	if os.Getenv("FEDGATHER_REQUIRE_SYSTEM") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func mnist2NN(t *testing.T) model.Spec {
	t.Helper()
	s, err := model.Parse("2nn", 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// get fetches path from a live aggregator.
func get(t *testing.T, addr, path string) (*http.Response, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp, b
}

func sameParams(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestExportTrainEvaluateInit trains the 2NN for 5 rounds with -export,
// serves the model over HTTP while the aggregator waits for trainers,
// evaluates the exported file in PyTorch and compares PyTorch's accuracy
// with the aggregator's, then starts a new job from the file with -init.
func TestExportTrainEvaluateInit(t *testing.T) {
	spec := mnist2NN(t)
	dir := t.TempDir()
	a, addr := aggregator(t, "-rounds", "5", "-min-trainers", "2", "-export", dir, "-export-every", "2")
	start := a.waitLine(jobRE, time.Minute)

	// The live endpoint, before any trainer has joined: version 0.
	resp, st := get(t, addr, "/v1/model")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/model: %s: %s", resp.Status, st)
	}
	for k, want := range map[string]string{
		"Content-Type":        "application/octet-stream",
		"Content-Disposition": `attachment; filename="model-v0000.safetensors"`,
		"X-Model-Version":     "0",
		"Content-Length":      strconv.Itoa(len(st)),
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("GET /v1/model: %s %q, want %q", k, got, want)
		}
	}
	live, meta, err := export.ReadSafetensors(bytes.NewReader(st), spec)
	if err != nil {
		t.Fatalf("GET /v1/model served an unreadable file: %v", err)
	}
	if meta.Version != 0 || fmt.Sprintf("%.4f", meta.Accuracy) != start[2] {
		t.Errorf("served metadata version %d accuracy %v; want 0 and the job's round-0 accuracy %s", meta.Version, meta.Accuracy, start[2])
	}
	resp, ar := get(t, addr, "/v1/model?format=arrow")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/vnd.apache.arrow.file" ||
		resp.Header.Get("Content-Disposition") != `attachment; filename="model-v0000.arrow"` || resp.Header.Get("X-Model-Version") != "0" {
		t.Errorf("GET /v1/model?format=arrow: %s, headers %v", resp.Status, resp.Header)
	}
	liveArrow, _, err := export.ReadArrow(bytes.NewReader(ar), spec)
	if err != nil {
		t.Fatalf("GET /v1/model?format=arrow served an unreadable file: %v", err)
	}
	if !sameParams(live, liveArrow) {
		t.Error("the served safetensors and Arrow models differ")
	}
	resp, body := get(t, addr, "/v1/model?format=onnx")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `unknown format "onnx": accepted formats are safetensors (the default) and arrow`) {
		t.Errorf("GET /v1/model?format=onnx: %s %q; want 400 naming the accepted formats", resp.Status, body)
	}
	t.Logf("served version 0 as safetensors (%d bytes) and Arrow (%d bytes)", len(st), len(ar))

	trainer(t, addr, "t1")
	trainer(t, addr, "t2")
	done := a.waitLine(doneRE, 3*time.Minute)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("aggregator exit code %d", code)
	}
	aggAcc := done[2]

	// The export directory: final files and every 2nd version.
	for name, want := range map[string]bool{
		"model.safetensors": true, "model.arrow": true,
		"model-v0002.safetensors": true, "model-v0004.safetensors": true,
		"model-v0001.safetensors": false, "model-v0003.safetensors": false, "model-v0005.safetensors": false,
	} {
		if _, err := os.Stat(filepath.Join(dir, name)); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", name, err == nil, want)
		}
	}
	stPath := filepath.Join(dir, "model.safetensors")
	final, finalMeta := readExported(t, stPath, spec)
	if finalMeta.Version != 5 || fmt.Sprintf("%.4f", finalMeta.Accuracy) != aggAcc {
		t.Errorf("exported metadata version %d accuracy %v; want 5 and the done line's %s", finalMeta.Version, finalMeta.Accuracy, aggAcc)
	}
	f, err := os.Open(filepath.Join(dir, "model.arrow"))
	if err != nil {
		t.Fatal(err)
	}
	finalArrow, _, err := export.ReadArrow(f, spec)
	f.Close()
	if err != nil {
		t.Fatalf("model.arrow: %v", err)
	}
	if !sameParams(final, finalArrow) {
		t.Error("model.safetensors and model.arrow hold different weights")
	}
	if sameParams(final, live) {
		t.Error("the final model equals the version-0 model")
	}

	t.Run("pytorch", func(t *testing.T) {
		requireTorch(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, systemPython, filepath.Join("examples", "pytorch", "evaluate.py"), "--threads", "1", stPath)
		cmd.Dir = bin.root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("evaluate.py: %v\nstdout: %s\nstderr: %s", err, out, stderr.Bytes())
		}
		m := regexp.MustCompile(`(?m)^accuracy=([0-9.]+) loss=([0-9.]+)$`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("evaluate.py printed no accuracy=A loss=L line:\n%s\nstderr: %s", out, stderr.Bytes())
		}
		py, _ := strconv.ParseFloat(string(m[1]), 64)
		agg, _ := strconv.ParseFloat(aggAcc, 64)
		if math.Abs(py-agg) > 0.001 {
			t.Errorf("PyTorch accuracy %.4f, aggregator %.4f: differ by more than 0.1 percentage point", py, agg)
		}
		t.Logf("PyTorch: accuracy=%s loss=%s; aggregator: accuracy=%s loss=%s", m[1], m[2], aggAcc, done[3])

		// Given the Arrow export instead, it says so.
		cmd = exec.CommandContext(ctx, systemPython, filepath.Join("examples", "pytorch", "evaluate.py"), filepath.Join(dir, "model.arrow"))
		cmd.Dir = bin.root
		msg, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(msg), "this is an Arrow IPC file") {
			t.Errorf("evaluate.py on model.arrow: %v, %s; want an error saying it is an Arrow file", err, msg)
		}
	})

	t.Run("init", func(t *testing.T) {
		b, addr := aggregator(t, "-init", stPath, "-rounds", "1")
		b.waitLine(regexp.MustCompile(`^init: starting from .*model\.safetensors, 2nn\(784-200-200-10\) \(exported at version 5 with accuracy `+regexp.QuoteMeta(aggAcc)+`\)$`), time.Minute)
		m := b.waitLine(jobRE, time.Minute)
		if m[1] != "2nn(784-200-200-10)" || m[2] != aggAcc {
			t.Errorf("job started as %s with round-0 accuracy %s; want 2nn(784-200-200-10) at the exported %s", m[1], m[2], aggAcc)
		}
		trainer(t, addr, "t3")
		b.waitLine(doneRE, 3*time.Minute)
		if code := b.wait(30 * time.Second); code != 0 {
			t.Fatalf("aggregator exit code %d", code)
		}
		t.Logf("-init: round-0 accuracy %s equals the exported %s", m[2], aggAcc)
	})
}

func readExported(t *testing.T, path string, spec model.Spec) ([]float32, export.Meta) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, meta, err := export.ReadSafetensors(f, spec)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return p, meta
}

// TestExportInitInfersModel starts from a logistic-regression file without
// -model: the job takes the file's model instead of the default 2nn.
func TestExportInitInfersModel(t *testing.T) {
	spec, err := model.Parse("logreg", 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float32, spec.NumParams())
	spec.Init(p, 9)
	path := filepath.Join(t.TempDir(), "logreg.safetensors")
	writeModel(t, path, spec, p)
	a, _ := aggregator(t, "-init", path, "-rounds", "1", "-min-trainers", "1")
	m := a.waitLine(jobRE, time.Minute)
	if m[1] != "logreg(784-10)" {
		t.Errorf("job model %s; want logreg(784-10) from the -init file", m[1])
	}
	a.kill(syscall.SIGTERM)
	a.wait(30 * time.Second)
}

func writeModel(t *testing.T, path string, spec model.Spec, p []float32) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := export.WriteSafetensors(&b, spec, p, export.Meta{Version: 1, Accuracy: 0.5}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestExportInitRejectsBadFiles: a damaged or mismatched -init file makes
// the aggregator exit 2 with a message naming the problem.
func TestExportInitRejectsBadFiles(t *testing.T) {
	spec := mnist2NN(t)
	p := make([]float32, spec.NumParams())
	spec.Init(p, 1)
	dir := t.TempDir()
	good := writeModel(t, filepath.Join(dir, "good.safetensors"), spec, p)
	hlen := binary.LittleEndian.Uint64(good)

	logreg, _ := model.Parse("logreg", 784, 10)
	lp := make([]float32, logreg.NumParams())
	logreg.Init(lp, 1)
	writeModel(t, filepath.Join(dir, "logreg.safetensors"), logreg, lp)

	var arrow bytes.Buffer
	if err := export.WriteArrow(&arrow, spec, p, export.Meta{}); err != nil {
		t.Fatal(err)
	}
	nan := bytes.Clone(good)
	binary.LittleEndian.PutUint32(nan[8+hlen+4*1000:], math.Float32bits(float32(math.NaN())))
	// Same-length edits keep the header length right, so each file has
	// exactly one fault.
	edit := func(old, new string) []byte {
		if len(old) != len(new) || !bytes.Contains(good, []byte(old)) {
			t.Fatalf("bad edit %q -> %q", old, new)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	for _, tc := range []struct {
		name string
		data []byte // nil: use the file named in args
		args []string
		want string
	}{
		{"truncated header", good[:40], nil, fmt.Sprintf("truncated header: the header length says %d bytes but only 32 follow", hlen)},
		{"truncated data", good[:len(good)-100], nil, `truncated data: tensor "fc3.weight" has data_offsets`},
		{"bad JSON", edit(`"dtype":"F32"`, `"dtype" "F32"`), nil, "header: bad JSON at byte"},
		{"wrong tensor name", edit(`"fc3.bias"`, `"out.bias"`), nil, `missing tensor fc3.bias, unexpected tensor "out.bias"`},
		{"wrong shape", edit(`"shape":[10,200]`, `"shape":[200,10]`), []string{"-model", "2nn"}, "tensor fc3.weight has shape [200 10], but 2nn(784-200-200-10) expects [10 200]"},
		{"wrong shape, model inferred", edit(`"shape":[10,200]`, `"shape":[200,10]`), nil, "tensor fc3.weight has shape [200 10]: 10 inputs, but fc2 has 200 outputs"},
		{"wrong dtype", edit(`"F32"`, `"F16"`), nil, `tensor "fc1.weight": dtype "F16"; only F32 (float32) is accepted`},
		{"NaN weight", nan, nil, "tensor fc1.weight holds NaN at [1, 216]"},
		{"another model", nil, []string{"-model", "2nn", "-init", filepath.Join(dir, "logreg.safetensors")}, "holds logreg(784-10), but -model 2nn is 2nn(784-200-200-10)"},
		{"an Arrow file", arrow.Bytes(), nil, "this is an Arrow IPC file, not safetensors"},
		{"no such file", nil, []string{"-init", filepath.Join(dir, "missing.safetensors")}, "no such file or directory"},
		{"export-every without export", nil, []string{"-export-every", "3"}, "-export-every 3 needs -export DIR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-listen", "127.0.0.1:0"}
			if tc.data != nil {
				path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".safetensors")
				if err := os.WriteFile(path, tc.data, 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-init", path)
			}
			args = append(args, tc.args...)
			a := start(t, "aggregator", bin.aggregator, args...)
			code := a.wait(time.Minute)
			stderr := a.Stderr()
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 2 and a message containing %q", code, stderr, tc.want)
			}
		})
	}
}
