package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"fedgather/internal/atomicfile"
	"fedgather/internal/cli"
	"fedgather/internal/export"
	"fedgather/internal/job"
	"fedgather/internal/model"
)

// Export file names inside the -export directory.
const (
	finalSafetensors = "model.safetensors"
	finalArrow       = "model.arrow"
	// versionPattern names the -export-every files: model-v0005.safetensors.
	versionPattern = "model-v%04d.safetensors"
)

// Content types of GET /v1/model. safetensors has no registered media type;
// application/vnd.apache.arrow.file is IANA's type for the Arrow IPC file
// format.
const (
	contentSafetensors = "application/octet-stream"
	contentArrow       = "application/vnd.apache.arrow.file"
)

// exportOptions are the aggregator's model import and export flags.
type exportOptions struct {
	fs    *flag.FlagSet // to tell whether -model was given
	dir   string        // -export
	every int           // -export-every
	init  string        // -init

	initSpec model.Spec  // the -init file's layers, checked against the job's
	initMeta export.Meta // the -init file's metadata

	// Written only by the job's observer (on the job's goroutine) and read
	// by finishExport after the job has returned.
	written int   // the last version -export-every wrote
	err     error // the first -export-every write that failed
}

// exportFlags registers the export flags on fs.
func exportFlags(fs *flag.FlagSet) *exportOptions {
	e := &exportOptions{fs: fs}
	fs.StringVar(&e.dir, "export", "", "directory to write the final model to, as "+finalSafetensors+" (loads into PyTorch) and "+finalArrow+" (Arrow IPC file); also where -export-every writes")
	fs.IntVar(&e.every, "export-every", 0, "also write every N-th model version to the -export directory as model-vNNNN.safetensors (0 = only the final model)")
	fs.StringVar(&e.init, "init", "", "start from the weights in this safetensors file; its layers must match -model (when -model is not given, the file's model is used)")
	return e
}

// loadInit checks the export flags and reads the -init model, if any, into
// cfg before the job is built. Without an explicit -model, cfg.Model
// becomes the file's model.
func (e *exportOptions) loadInit(cfg *job.Config) error {
	if e.every < 0 {
		return fmt.Errorf("-export-every %d: want ≥ 0 (0 = only the final model)", e.every)
	}
	if e.every > 0 && e.dir == "" {
		return fmt.Errorf("-export-every %d needs -export DIR to write into", e.every)
	}
	if e.init == "" {
		return nil
	}
	f, err := os.Open(e.init)
	if err != nil {
		return fmt.Errorf("-init: %w", err)
	}
	defer f.Close()
	st, err := export.DecodeSafetensors(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("-init %s: %w", e.init, err)
	}
	var spec model.Spec
	if cli.Given(e.fs, "model") {
		in, classes, err := st.Dims()
		if err != nil {
			return fmt.Errorf("-init %s: %w", e.init, err)
		}
		if spec, err = model.Parse(cfg.Model, in, classes); err != nil {
			return fmt.Errorf("-model: %w", err)
		}
		if held, err := st.Spec(); err == nil && !held.SameLayout(spec) {
			return fmt.Errorf("-init %s holds %s, but -model %s is %s", e.init, held, cfg.Model, spec)
		}
	} else {
		if spec, err = st.Spec(); err != nil {
			return fmt.Errorf("-init %s: %w", e.init, err)
		}
		cfg.Model = spec.Name
	}
	params, err := st.Params(spec)
	if err != nil {
		return fmt.Errorf("-init %s: %w", e.init, err)
	}
	cfg.InitParams = params
	e.initSpec, e.initMeta = spec, st.Meta
	return nil
}

// setupExport serves the model on mux and exports versions as the job runs.
func setupExport(mux *http.ServeMux, j *job.Job, e *exportOptions) error {
	if e.init != "" {
		if !j.Spec().SameLayout(e.initSpec) {
			return fmt.Errorf("-init %s holds %s, but the job's model is %s", e.init, e.initSpec, j.Spec())
		}
		from := ""
		if !math.IsNaN(e.initMeta.Accuracy) {
			from = fmt.Sprintf(" (exported at version %d with accuracy %.4f)", e.initMeta.Version, e.initMeta.Accuracy)
		}
		if _, version, _ := j.Model(); version > 0 {
			fmt.Fprintf(j.Output(), "init: %s not used: the job resumed from its -state checkpoint at version %d\n", e.init, version)
		} else {
			fmt.Fprintf(j.Output(), "init: starting from %s, %s%s\n", e.init, e.initSpec, from)
		}
	}
	if e.dir != "" {
		if err := os.MkdirAll(e.dir, 0o755); err != nil {
			return fmt.Errorf("-export: %w", err)
		}
	}
	mux.HandleFunc("GET /v1/model", func(w http.ResponseWriter, r *http.Request) { serveModel(w, r, j) })
	if e.every > 0 {
		j.Observe(func(r job.Report) { e.periodic(j, r) })
	}
	return nil
}

// periodic writes the model after a round whose version is a multiple of
// -export-every. A failure is logged and reported when the job ends.
func (e *exportOptions) periodic(j *job.Job, r job.Report) {
	if r.Version == 0 || r.Version%e.every != 0 || r.Version == e.written {
		return
	}
	params, version, acc := j.Model()
	path := filepath.Join(e.dir, fmt.Sprintf(versionPattern, version))
	err := writeFile(path, func(w io.Writer) error {
		return export.WriteSafetensors(w, j.Spec(), params, export.Meta{Version: version, Accuracy: acc})
	})
	if err != nil {
		j.Logger().Error("export failed", "version", version, "err", err)
		if e.err == nil {
			e.err = err
		}
		return
	}
	e.written = version
	j.Logger().Info("exported model", "version", version, "accuracy", acc, "path", path)
}

// finishExport writes the final model when the job ends.
func finishExport(j *job.Job, e *exportOptions) error {
	if e.dir == "" {
		return e.err
	}
	params, version, acc := j.Model()
	meta := export.Meta{Version: version, Accuracy: acc}
	spec := j.Spec()
	stPath, arrowPath := filepath.Join(e.dir, finalSafetensors), filepath.Join(e.dir, finalArrow)
	err := errors.Join(
		writeFile(stPath, func(w io.Writer) error { return export.WriteSafetensors(w, spec, params, meta) }),
		writeFile(arrowPath, func(w io.Writer) error { return export.WriteArrow(w, spec, params, meta) }),
	)
	if err != nil {
		return errors.Join(e.err, err)
	}
	fmt.Fprintf(j.Output(), "exported model version %d (accuracy %.4f) to %s and %s\n", version, acc, stPath, arrowPath)
	return e.err
}

// serveModel answers GET /v1/model?format=safetensors|arrow with the
// current model version.
func serveModel(w http.ResponseWriter, r *http.Request, j *job.Job) {
	formats := r.URL.Query()["format"]
	format := "safetensors"
	switch len(formats) {
	case 0:
	case 1:
		if formats[0] != "" {
			format = formats[0]
		}
	default:
		http.Error(w, fmt.Sprintf("format given %d times; give it once: safetensors (the default) or arrow", len(formats)), http.StatusBadRequest)
		return
	}
	params, version, acc := j.Model()
	meta := export.Meta{Version: version, Accuracy: acc}
	var buf bytes.Buffer
	var ctype string
	var err error
	switch format {
	case "safetensors":
		ctype = contentSafetensors
		err = export.WriteSafetensors(&buf, j.Spec(), params, meta)
	case "arrow":
		ctype = contentArrow
		err = export.WriteArrow(&buf, j.Spec(), params, meta)
	default:
		http.Error(w, fmt.Sprintf("unknown format %q: accepted formats are safetensors (the default) and arrow", format), http.StatusBadRequest)
		return
	}
	if err != nil {
		j.Logger().Error("serve model", "format", format, "err", err)
		http.Error(w, "cannot export the model: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="model-v%04d.%s"`, version, format))
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Model-Version", strconv.Itoa(version))
	h.Set("X-Model-Accuracy", strconv.FormatFloat(acc, 'f', -1, 64))
	h.Set("X-Model-Spec", j.Spec().String())
	_, _ = w.Write(buf.Bytes())
}

// writeFile writes path atomically (see atomicfile.Write).
func writeFile(path string, write func(io.Writer) error) error {
	if err := atomicfile.Write(path, write); err != nil {
		return fmt.Errorf("export %s: %w", path, err)
	}
	return nil
}
