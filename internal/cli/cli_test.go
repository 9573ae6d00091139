package cli

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// An error about a flag whose value came from the environment names the
// variable as it was set; one about a flag given on the command line, or
// about another flag whose name ends like it, does not.
func TestExplainNamesTheVariable(t *testing.T) {
	t.Setenv("FEDGATHER_PING", "0")
	t.Setenv("FEDGATHER_TRAINERS", "2")
	t.Setenv("FEDGATHER_ROUNDS", "7")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ping := fs.Duration("ping", 5*time.Second, "")
	fs.Int("trainers", 1, "")
	fs.Int("min-trainers", 1, "")
	rounds := fs.Int("rounds", 1, "")
	if err := Parse(fs, []string{"-rounds", "3"}); err != nil {
		t.Fatal(err)
	}
	if *ping != 0 || *rounds != 3 {
		t.Fatalf("ping %v rounds %d; want 0s from the environment and 3 from the command line", *ping, *rounds)
	}
	for _, tc := range []struct{ err, want string }{
		{"-ping 0s: want a positive duration", "-ping 0s: want a positive duration (set in the environment: FEDGATHER_PING=0)"},
		{"-min-trainers 0: want at least 1", "-min-trainers 0: want at least 1"},
		{"-rounds 3: too few", "-rounds 3: too few"},
		{"-trainers 2: want more", "-trainers 2: want more (set in the environment: FEDGATHER_TRAINERS=2)"},
		{"-pingpong: no such flag", "-pingpong: no such flag"},
	} {
		if got := Explain(fs, errors.New(tc.err)).Error(); got != tc.want {
			t.Errorf("Explain(%q) = %q; want %q", tc.err, got, tc.want)
		}
	}
}

// A bad duration, on the command line or in the environment, says what a
// duration looks like.
func TestBadDurationSaysWhatIsWanted(t *testing.T) {
	for _, env := range []bool{false, true} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Duration("task-deadline", 0, "")
		args := []string{"-task-deadline", "5"}
		if env {
			t.Setenv("FEDGATHER_TASK_DEADLINE", "5")
			args = nil
		}
		err := Parse(fs, args)
		if err == nil || !strings.Contains(err.Error(), "(want a duration such as 5s or 1m30s)") {
			t.Errorf("environment %v: %v; want the error to say a duration is wanted", env, err)
		}
	}
}
