// Package cli holds what the two commands share: flags that may also be
// given as environment variables, and logging set-up.
package cli

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// EnvName is the environment variable that sets flag name for program
// prefix: FEDGATHER_ plus the name upper-cased with dashes as underscores.
func EnvName(name string) string {
	return "FEDGATHER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args into fs after applying environment variables for every
// flag not given on the command line. A bad value in either place is an
// error naming the flag or the variable.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		// The flag package says only "parse error" for a bad duration.
		fs.VisitAll(func(f *flag.Flag) {
			if isDuration(f) && strings.HasSuffix(err.Error(), "for flag -"+f.Name+": parse error") {
				err = fmt.Errorf("%w (want a duration such as 5s or 1m30s)", err)
			}
		})
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with -; see -help)", fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s=%q: %v", EnvName(f.Name), v, e)
				if isDuration(f) {
					err = fmt.Errorf("%w (want a duration such as 5s or 1m30s)", err)
				}
			}
		}
	})
	return err
}

func isDuration(f *flag.Flag) bool {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return false
	}
	_, ok = g.Get().(time.Duration)
	return ok
}

// Explain adds to err, a check of the flags' values that names them as
// "-NAME ...", which environment variables set the flags it names, for a
// user who gave no such flag on the command line.
func Explain(fs *flag.FlagSet, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var from []string
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(EnvName(f.Name))
		if ok && v == f.Value.String() && (strings.Contains(msg, "-"+f.Name+" ") || strings.Contains(msg, "-"+f.Name+":")) {
			from = append(from, fmt.Sprintf("%s=%s", EnvName(f.Name), v))
		}
	})
	if len(from) == 0 {
		return err
	}
	return fmt.Errorf("%w (set in the environment: %s)", err, strings.Join(from, ", "))
}

// Given reports whether the flag was set on the command line or through
// its environment variable.
func Given(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	_, env := os.LookupEnv(EnvName(name))
	return given || env
}

// Logger returns a text logger on w at the named level.
func Logger(w io.Writer, level string, attrs ...any) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})).With(attrs...), nil
}
