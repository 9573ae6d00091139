package e2e

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"fedgather/internal/checkpoint"
)

// trainRounds runs an aggregator with args and n trainers to the end and
// returns its stdout lines.
func trainRounds(t *testing.T, n int, args ...string) []string {
	t.Helper()
	a, addr := aggregator(t, args...)
	for i := 1; i <= n; i++ {
		trainer(t, addr, fmt.Sprintf("t%d", i))
	}
	a.waitLine(doneRE, 3*time.Minute)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("aggregator exit code %d", code)
	}
	return a.Lines()
}

func assertRisesAndShared(t *testing.T, lines []string, rounds, trainers, perRound int) {
	t.Helper()
	rs := rounds2(t, lines, rounds)
	done := map[string]int{}
	for _, r := range rs {
		if r.updates != perRound {
			t.Errorf("round %d folded %d updates, want %d", r.round, r.updates, perRound)
		}
		for name, n := range r.tasks {
			done[name] += n
		}
	}
	if len(done) != trainers {
		t.Errorf("tasks were done by %v; want all %d trainers to have done some", done, trainers)
	}
	first, last := rs[0].acc, rs[len(rs)-1].acc
	if !(last > first) {
		t.Errorf("accuracy did not rise: round 1 %.4f, round %d %.4f", first, len(rs), last)
	}
	t.Logf("accuracy round 1 %.4f → round %d %.4f; tasks per trainer %v", first, len(rs), last, done)
}

func rounds2(t *testing.T, lines []string, want int) []roundLine {
	t.Helper()
	rs := rounds(lines)
	if len(rs) != want {
		t.Fatalf("%d round lines, want %d", len(rs), want)
	}
	for i, r := range rs {
		if r.round != i+1 {
			t.Fatalf("round line %d says round %d", i+1, r.round)
		}
	}
	return rs
}

func TestFedAvgThreeTrainers(t *testing.T) {
	lines := trainRounds(t, 3, "-rounds", "5", "-min-trainers", "3")
	assertRisesAndShared(t, lines, 5, 3, 10)
}

func TestFedSGDThreeTrainers(t *testing.T) {
	lines := trainRounds(t, 3, "-rounds", "5", "-min-trainers", "3", "-mode", "fedsgd", "-lr", "0.5", "-fraction", "0.3")
	assertRisesAndShared(t, lines, 5, 3, 30)
}

// TestSameModelWithOneOrThreeTrainers runs the same seed with 1 and with 3
// trainers and compares the final models bit for bit.
func TestSameModelWithOneOrThreeTrainers(t *testing.T) {
	var models [][]float32
	for _, n := range []int{1, 3} {
		state := t.TempDir()
		trainRounds(t, n, "-rounds", "3", "-min-trainers", fmt.Sprint(n), "-seed", "7", "-state", state)
		s, err := checkpoint.Load(state)
		if err != nil {
			t.Fatal(err)
		}
		if s.NextRound != 3 {
			t.Fatalf("checkpoint after %d rounds says next round %d", 3, s.NextRound)
		}
		models = append(models, s.Params)
	}
	diff := 0
	for i := range models[0] {
		if math.Float32bits(models[0][i]) != math.Float32bits(models[1][i]) {
			diff++
		}
	}
	if diff != 0 {
		t.Fatalf("%d of %d parameters differ between 1 and 3 trainers", diff, len(models[0]))
	}
	t.Logf("1 trainer and 3 trainers: all %d parameters bit-identical", len(models[0]))
}

// TestTargetStopsAtTheFirstVersionThatReachesIt runs to a target accuracy.
// A version is evaluated in the same gather as the next round's training,
// so when it reaches the target that training has been done too: it must
// be discarded, not applied. The run must stop at the first round whose
// version reaches the target, and its checkpoint must hold exactly the
// model of a run of that many rounds.
func TestTargetStopsAtTheFirstVersionThatReachesIt(t *testing.T) {
	const target = 0.86
	state := t.TempDir()
	lines := trainRounds(t, 2, "-rounds", "10", "-target", fmt.Sprint(target), "-min-trainers", "2", "-state", state)
	rs := rounds(lines)
	if len(rs) < 2 || rs[len(rs)-1].acc < target || rs[len(rs)-2].acc >= target {
		t.Fatalf("round lines %+v: want them to end at the first round reaching %.2f", rs, target)
	}
	n := len(rs)
	var done []string
	for _, l := range lines {
		if m := doneRE.FindStringSubmatch(l); m != nil {
			done = m
		}
	}
	if done == nil || done[1] != fmt.Sprint(n) || done[2] != fmt.Sprintf("%.4f", rs[n-1].acc) {
		t.Fatalf("summary %q after %d rounds ending at accuracy %.4f", done, n, rs[n-1].acc)
	}
	// Every round's training and evaluation, plus the training of round
	// n+1, gathered with round n's evaluation and then discarded.
	c := counters(t, lines)
	if c["completed"] != int64(n*tasksPerRound+10) {
		t.Errorf("completed=%d; want %d rounds × %d + 10 discarded training tasks", c["completed"], n, tasksPerRound)
	}
	got, err := checkpoint.Load(state)
	if err != nil {
		t.Fatal(err)
	}
	ref := t.TempDir()
	trainRounds(t, 2, "-rounds", fmt.Sprint(n), "-min-trainers", "2", "-state", ref)
	want, err := checkpoint.Load(ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.NextRound != n || got.Version != want.Version || got.Accuracy != want.Accuracy {
		t.Fatalf("checkpoint at the target: next round %d, version %d, accuracy %v; a %d-round run: %d, %d, %v",
			got.NextRound, got.Version, got.Accuracy, n, want.NextRound, want.Version, want.Accuracy)
	}
	if !sameParams(got.Params, want.Params) {
		t.Fatalf("the parameters after stopping at the target differ from those of a %d-round run", n)
	}
	t.Logf("target %.2f reached at round %d (accuracy %.4f, previous %.4f); checkpoint bit-identical to a %d-round run; completed=%d",
		target, n, rs[n-1].acc, rs[n-2].acc, n, c["completed"])
}

// TestLateTrainerJoins starts a second trainer after round 2 and checks it
// receives tasks.
func TestLateTrainerJoins(t *testing.T) {
	a, addr := aggregator(t, "-rounds", "8")
	trainer(t, addr, "early", "-slowdown", "3")
	a.waitLine(regexp.MustCompile(`^round 2/`), time.Minute)
	trainer(t, addr, "late")
	a.waitLine(doneRE, 3*time.Minute)
	rs := rounds2(t, a.Lines(), 8)
	if rs[0].tasks["late"] != 0 || rs[1].tasks["late"] != 0 {
		t.Fatalf("late trainer had tasks before it started: %v %v", rs[0].tasks, rs[1].tasks)
	}
	late := 0
	for _, r := range rs[2:] {
		late += r.tasks["late"]
	}
	if late == 0 {
		t.Fatalf("the trainer that joined after round 2 did no task in rounds 3-8")
	}
	t.Logf("late trainer did %d tasks in rounds 3-8", late)
}

// TestBadFlagsAndMissingDataset checks the aggregator's errors for bad input.
func TestBadFlagsAndMissingDataset(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-rounds", "abc"}, `invalid value "abc" for flag -rounds`},
		{[]string{"-fraction", "2"}, "-fraction 2: want 0 < C ≤ 1"},
		{[]string{"-dataset", filepath.Join("no", "such", "dir")}, "no such file or directory"},
		// A compressed buffer that claims a petabyte once uncompressed.
		{[]string{"-dataset", filepath.Join("internal", "e2e", "testdata", "huge-claim.arrows")},
			"huge-claim.arrows (IPC stream format): record batch 0: buffer 1: expected an uncompressed length in [0, "},
		{[]string{"-partition", "dirichlet:-1"}, "dirichlet"},
		{[]string{"-model", "cnn9"}, "cnn9"},
		{[]string{"-max-message", "100000"}, "-max-message 100000: model 2nn(784-200-200-10)'s updates take up to 862382 bytes"},
		{[]string{"-max-message", "0"}, "-max-message 0: want a positive number of bytes"},
		{[]string{"-ping", "0"}, "-ping 0s: want a positive duration"},
		{[]string{"-task-deadline", "5"}, `invalid value "5" for flag -task-deadline: parse error (want a duration such as 5s or 1m30s)`},
		{[]string{"-demo", "-trainers", "2", "-min-trainers", "3"}, "-min-trainers 3 with -demo -trainers 2: the demo would wait for trainers it never starts"},
		{[]string{"FEDGATHER_ROUNDS=-3"}, "-rounds -3: want at least 1 (set in the environment: FEDGATHER_ROUNDS=-3)"},
	} {
		var env, args []string
		for _, a := range tc.args {
			if strings.HasPrefix(a, "FEDGATHER_") {
				env = append(env, a)
			} else {
				args = append(args, a)
			}
		}
		p := startEnv(t, "aggregator", bin.aggregator, env, append([]string{"-listen", "127.0.0.1:0"}, args...)...)
		code := p.wait(time.Minute)
		if code != 2 || !strings.Contains(p.Stderr(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, p.Stderr(), tc.want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-slowdown", "0"}, "-slowdown 0: want a factor between 1 and 1000"},
		{[]string{"-max-backoff", "0s"}, "-max-backoff 0s: want a positive duration"},
		{[]string{"-give-up", "-1m"}, "-give-up -1m0s: want a duration ≥ 0"},
		{[]string{"-max-message", "-1"}, "-max-message -1: want a positive number of bytes"},
	} {
		p := start(t, "trainer", bin.trainer, tc.args...)
		code := p.wait(time.Minute)
		if code != 2 || !strings.Contains(p.Stderr(), tc.want) {
			t.Errorf("trainer %v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, p.Stderr(), tc.want)
		}
	}
}
