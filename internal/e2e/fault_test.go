package e2e

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

var chaos = flag.Bool("chaos", false, "run the 30-round chaos test (about two minutes)")

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// waitStderr waits until a process's stderr matches re.
func (p *proc) waitStderr(re *regexp.Regexp, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !re.MatchString(p.Stderr()) {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s's stderr never matched %q", p.name, re)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKilledTrainersTaskIsRedistributed kills one of four trainers with
// SIGKILL while it holds a task; the round must complete, with that task
// done by another trainer and every selected client counted once.
func TestKilledTrainersTaskIsRedistributed(t *testing.T) {
	a, addr := aggregator(t, "-rounds", "4", "-min-trainers", "3")
	var victim *proc
	for i := 1; i <= 4; i++ {
		p := trainer(t, addr, fmt.Sprintf("t%d", i), "-slowdown", "8", "-log-level", "debug")
		if i == 2 {
			victim = p
		}
	}
	// Round 2 (round=1 on the wire) is the first that starts with every
	// trainer connected and holding a model.
	victim.waitStderr(regexp.MustCompile(`msg=training .*round=1 `), time.Minute)
	victim.kill(syscall.SIGKILL)
	a.waitLine(doneRE, 2*time.Minute)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("aggregator exit code %d", code)
	}
	rs := rounds2(t, a.Lines(), 4)
	for i, r := range rs {
		n := 0
		for _, c := range r.tasks {
			n += c
		}
		// Each round's gather also evaluates the previous round's version.
		want := tasksPerRound
		if i == 0 {
			want = 10
		}
		if r.updates != 10 || n != want {
			t.Errorf("round %d: %d updates, %d tasks credited; want 10 and %d", r.round, r.updates, n, want)
		}
	}
	if rs[1].requeued < 1 {
		t.Errorf("round 2 requeued %d tasks; the killed trainer's task should have been requeued", rs[1].requeued)
	}
	for _, r := range rs[2:] {
		if r.tasks["t2"] != 0 {
			t.Errorf("round %d credits %d tasks to the killed trainer", r.round, r.tasks["t2"])
		}
	}
	c := counters(t, a.Lines())
	if c["completed"] != 4*tasksPerRound || c["dropped"] != 0 {
		t.Errorf("counters %v: want completed=%d (each task once), dropped=0", c, 4*tasksPerRound)
	}
	t.Logf("round 2 after the kill: %d updates, requeued=%d, tasks %v; counters completed=%d assigned=%d requeued=%d", rs[1].updates, rs[1].requeued, rs[1].tasks, c["completed"], c["assigned"], c["requeued"])
}

// TestSlowTrainerDoesNotHoldUpTheRound compares round times of three
// trainers with and without a fourth that is 25 times slower. A round that
// waited for the slow trainer's task would take several times longer; one
// whose late task is issued again to a fast trainer takes about as long,
// give or take the noise of a shared machine (up to 1.6x measured while
// other tests ran beside it), hence the 2x line.
func TestSlowTrainerDoesNotHoldUpTheRound(t *testing.T) {
	run := func(withSlow bool) ([]roundLine, map[string]int) {
		n := 3
		if withSlow {
			n = 4
		}
		a, addr := aggregator(t, "-rounds", "6", "-min-trainers", fmt.Sprint(n))
		for i := 1; i <= 3; i++ {
			trainer(t, addr, fmt.Sprintf("fast%d", i), "-slowdown", "4")
		}
		if withSlow {
			trainer(t, addr, "slow", "-slowdown", "100")
		}
		a.waitLine(doneRE, 3*time.Minute)
		rs := rounds2(t, a.Lines(), 6)
		total := map[string]int{}
		for _, r := range rs {
			for k, v := range r.tasks {
				total[k] += v
			}
		}
		return rs, total
	}
	secs := func(rs []roundLine) []float64 {
		var s []float64
		for _, r := range rs[1:] { // round 1 also moves every shard
			s = append(s, r.secs)
		}
		return s
	}
	base, _ := run(false)
	slow, tasks := run(true)
	b, s := median(secs(base)), median(secs(slow))
	reissued := 0
	for _, r := range slow {
		reissued += r.reissued
	}
	t.Logf("median round time: 3 trainers %.2fs, with a 25x slower 4th %.2fs (ratio %.2f); tasks %v; reissued %d; rounds 2-6: %.2f and %.2f", b, s, s/b, tasks, reissued, secs(base), secs(slow))
	if reissued == 0 {
		t.Error("no task was issued again in the run with the slow trainer: it never held a task past its deadline, so this run shows nothing")
	}
	if s > 2*b {
		t.Errorf("with the slow trainer rounds took %.2fs, more than 2x the %.2fs without it", s, b)
	}
	for i := 1; i <= 3; i++ {
		if f := tasks[fmt.Sprintf("fast%d", i)]; tasks["slow"] >= f {
			t.Errorf("slow trainer did %d tasks, fast%d only %d; want the fast trainers to take most", tasks["slow"], i, f)
		}
	}
}

// TestAggregatorKilledAndRestarted stops the aggregator twice mid-run and
// restarts it on the same state directory and address each time: first
// with SIGTERM (a graceful stop: exit 143, and the trainers are told to
// reconnect, not that the job is done), then with SIGKILL. The same two
// trainer processes carry the job to its end and then exit 0; every round
// runs exactly once and the final model is the one an uninterrupted run
// gives.
func TestAggregatorKilledAndRestarted(t *testing.T) {
	const nRounds = 8
	state := t.TempDir()
	listen := freeAddr(t)
	// Every round waits for both trainers: else a restarted aggregator
	// may run the job to its end with the first to reconnect and exit
	// while the other waits out its back-off, never to hear the job is
	// done.
	args := []string{"-listen", listen, "-rounds", fmt.Sprint(nRounds), "-seed", "11", "-state", state, "-min-trainers", "2"}
	a1, addr := aggregator(t, args...)
	var ts []*proc
	for i := 1; i <= 2; i++ {
		ts = append(ts, trainer(t, addr, fmt.Sprintf("t%d", i)))
	}
	a1.waitLine(regexp.MustCompile(`^round 2/`), time.Minute)
	a1.kill(syscall.SIGTERM)
	if code := a1.wait(20 * time.Second); code != 143 || !strings.Contains(a1.Stderr(), "stopped by terminated before the job was done") {
		t.Errorf("after SIGTERM the aggregator exited %d, stderr %q; want 143 saying it stopped", code, tail(a1.Stderr(), 300))
	}
	if ls := a1.Lines(); len(ls) == 0 || !regexp.MustCompile(`^stopped rounds=\d+ accuracy=`).MatchString(ls[len(ls)-1]) {
		t.Errorf("the stopped aggregator's last line is %q; want stopped rounds=...", ls[max(len(ls)-1, 0):])
	}

	a2, _ := aggregator(t, args...)
	a2.waitLine(regexp.MustCompile(`^round [45]/`), 2*time.Minute)
	a2.kill(syscall.SIGKILL)
	a2.wait(10 * time.Second)

	a3, _ := aggregator(t, args...)
	got := a3.waitLine(doneRE, 3*time.Minute)
	if code := a3.wait(30 * time.Second); code != 0 {
		t.Errorf("the last aggregator exited %d", code)
	}
	for _, tr := range ts {
		if code := tr.wait(30 * time.Second); code != 0 || !strings.Contains(tr.Stderr(), `reason="job complete"`) {
			t.Errorf("trainer %s exited %d; want 0, told by the last aggregator that the job is complete; stderr:\n%s", tr.name, code, tail(tr.Stderr(), 600))
		}
		if strings.Count(tr.Stderr(), "aggregator says the job is done") != 1 {
			t.Errorf("trainer %s was told the job is done %d times; want once, at its end", tr.name, strings.Count(tr.Stderr(), "aggregator says the job is done"))
		}
	}

	seen := map[int]int{}
	var resumed []string
	for _, a := range []*proc{a1, a2, a3} {
		for _, r := range rounds(a.Lines()) {
			seen[r.round]++
		}
		for _, l := range a.Lines() {
			if strings.HasPrefix(l, "resumed at round") {
				resumed = append(resumed, l)
			}
		}
	}
	for r := 1; r <= nRounds; r++ {
		if seen[r] != 1 {
			t.Errorf("round %d ran %d times across the stops; want exactly once (%q)", r, seen[r], resumed)
		}
	}
	if len(seen) != nRounds || len(resumed) != 2 {
		t.Errorf("rounds seen: %v; resumed lines %q, want 2", seen, resumed)
	}

	// The same job without the stops.
	ref, raddr := aggregator(t, "-rounds", fmt.Sprint(nRounds), "-seed", "11", "-state", t.TempDir())
	trainer(t, raddr, "r1")
	want := ref.waitLine(doneRE, 3*time.Minute)
	if got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("after the stops: rounds=%s accuracy=%s loss=%s; uninterrupted: rounds=%s accuracy=%s loss=%s", got[1], got[2], got[3], want[1], want[2], want[3])
	}
	t.Logf("stopped (SIGTERM) after round %d, killed after round %d; %q; final accuracy %s (uninterrupted run: %s)", len(rounds(a1.Lines())), len(rounds(a2.Lines())), resumed, got[2], want[2])
}

// TestTrainersGoneForTenSeconds kills every trainer, waits ten seconds and
// starts new ones: the run carries on to the end.
func TestTrainersGoneForTenSeconds(t *testing.T) {
	a, addr := aggregator(t, "-rounds", "5")
	ts := []*proc{trainer(t, addr, "a1"), trainer(t, addr, "a2")}
	a.waitLine(regexp.MustCompile(`^round 2/`), time.Minute)
	for _, p := range ts {
		p.kill(syscall.SIGKILL)
	}
	time.Sleep(10 * time.Second)
	if strings.Contains(strings.Join(a.Lines(), "\n"), "done rounds") {
		t.Fatal("the job ended while no trainer was connected")
	}
	trainer(t, addr, "b1")
	trainer(t, addr, "b2")
	a.waitLine(doneRE, 2*time.Minute)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("aggregator exit code %d", code)
	}
	rs := rounds2(t, a.Lines(), 5)
	for _, r := range rs {
		if r.updates != 10 {
			t.Errorf("round %d folded %d updates, want 10", r.round, r.updates)
		}
	}
	t.Logf("trainers gone for 10s; the run completed 5 rounds; rounds took %.1fs %.1fs %.1fs %.1fs %.1fs", rs[0].secs, rs[1].secs, rs[2].secs, rs[3].secs, rs[4].secs)
}

// TestChaos kills a trainer and starts a new one every few seconds for 30
// rounds and compares the result with a fault-free run of the same seed.
// It takes a few minutes: go test ./internal/e2e -run Chaos -chaos
func TestChaos(t *testing.T) {
	if !*chaos {
		t.Skip("long test: run with -chaos")
	}
	const nRounds = 30
	args := []string{"-rounds", fmt.Sprint(nRounds), "-seed", "5"}
	ref, raddr := aggregator(t, args...)
	trainer(t, raddr, "ref1")
	trainer(t, raddr, "ref2")
	want := ref.waitLine(doneRE, 5*time.Minute)

	a, addr := aggregator(t, args...)
	live := []*proc{}
	next := 1
	spawn := func() {
		// Slowed down so that the run lasts long enough for many kills
		// (the speed of training must not make the test trivial).
		live = append(live, trainer(t, addr, fmt.Sprintf("c%d", next), "-slowdown", "10"))
		next++
	}
	for i := 0; i < 3; i++ {
		spawn()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	kills := 0
	deadline := time.Now().Add(10 * time.Minute)
	for {
		select {
		case <-a.exited:
		case <-time.After(time.Duration(700+rng.IntN(1300)) * time.Millisecond):
			i := rng.IntN(len(live))
			live[i].kill(syscall.SIGKILL)
			live = append(live[:i], live[i+1:]...)
			kills++
			spawn()
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("chaos run did not finish in 10 minutes")
		}
		break
	}
	got := a.waitLine(doneRE, time.Second)
	c := counters(t, a.Lines())
	var accGot, accWant float64
	fmt.Sscan(got[2], &accGot)
	fmt.Sscan(want[2], &accWant)
	t.Logf("%d trainers killed; accuracy %.4f vs fault-free %.4f; counters %v", kills, accGot, accWant, c)
	if kills < 10 {
		t.Errorf("only %d trainers were killed before the job ended; the test needs at least 10 to mean anything", kills)
	}
	if math.Abs(accGot-accWant) > 0.005 {
		t.Errorf("accuracy %.4f differs from the fault-free %.4f by more than 0.5 points", accGot, accWant)
	}
	if c["completed"] != nRounds*tasksPerRound {
		t.Errorf("completed=%d, want exactly %d (%d per round, none twice)", c["completed"], nRounds*tasksPerRound, tasksPerRound)
	}
	if c["dropped"] != 0 {
		t.Errorf("dropped=%d tasks", c["dropped"])
	}
}
