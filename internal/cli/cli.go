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
				err = fmt.Errorf("%w%s", err, durationHint)
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
			f.Value = &fromEnv{Value: f.Value, text: EnvName(f.Name) + "=" + v}
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s=%q: %v", EnvName(f.Name), v, e)
				if isDuration(f) {
					err = fmt.Errorf("%w%s", err, durationHint)
				}
			}
		}
	})
	return err
}

// durationHint ends an error about a bad duration: the flag package says
// only "parse error".
const durationHint = " (want a duration such as 5s or 1m30s)"

// fromEnv marks a flag whose value Parse took from the environment.
type fromEnv struct {
	flag.Value
	text string // NAME=value, as it was in the environment
}

// Get passes on the value's own Get, if it has one.
func (e *fromEnv) Get() any {
	if g, ok := e.Value.(flag.Getter); ok {
		return g.Get()
	}
	return e.Value.String()
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
// "-NAME ..." or "-NAME: ...", the environment variables that set the
// flags it names, when Parse took their values from there.
func Explain(fs *flag.FlagSet, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var from []string
	fs.VisitAll(func(f *flag.Flag) {
		if e, ok := f.Value.(*fromEnv); ok && names(msg, f.Name) {
			from = append(from, e.text)
		}
	})
	if len(from) == 0 {
		return err
	}
	return fmt.Errorf("%w (set in the environment: %s)", err, strings.Join(from, ", "))
}

// names reports whether msg names flag name: "-NAME" followed by a space
// or a colon, and not the end of a longer name (-trainers in -min-trainers).
func names(msg, name string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], "-"+name)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+1+len(name)
		before := start == 0 || !isNameByte(msg[start-1])
		after := end < len(msg) && (msg[end] == ' ' || msg[end] == ':')
		if before && after {
			return true
		}
		i = end
	}
}

func isNameByte(c byte) bool {
	return c == '-' || c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
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
