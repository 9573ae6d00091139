package main

import (
	"flag"
	"net/http"

	"fedgather/internal/job"
)

// exportOptions are the aggregator's model import and export flags.
type exportOptions struct{}

// exportFlags registers the export flags on fs.
func exportFlags(fs *flag.FlagSet) *exportOptions { return &exportOptions{} }

// loadInit reads the -init model, if any, into cfg before the job is built.
func (e *exportOptions) loadInit(cfg *job.Config) error { return nil }

// setupExport serves the model on mux and exports versions as the job runs.
func setupExport(mux *http.ServeMux, j *job.Job, e *exportOptions) error { return nil }

// finishExport writes the final model when the job ends.
func finishExport(j *job.Job, e *exportOptions) error { return nil }
