package job

import (
	"io"
	"log/slog"
)

// Output is where the job prints its per-round lines and summary, for
// commands that add lines of their own (such as model exports).
func (j *Job) Output() io.Writer { return j.cfg.Out }

// Logger is the job's structured logger.
func (j *Job) Logger() *slog.Logger { return j.cfg.Logger }
