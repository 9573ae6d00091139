package job

import (
	"slices"
	"strings"
	"testing"
)

func TestSelectClientsIsSeededAndDistinct(t *testing.T) {
	a := SelectClients(1, 3, 100, 10)
	b := SelectClients(1, 3, 100, 10)
	c := SelectClients(1, 4, 100, 10)
	if len(a) != 10 {
		t.Fatalf("selected %d clients, want 10", len(a))
	}
	seen := map[int]bool{}
	for i, k := range a {
		if k != b[i] {
			t.Fatalf("same seed and round gave %v and %v", a, b)
		}
		if k < 0 || k >= 100 || seen[k] {
			t.Fatalf("selection %v has an out-of-range or repeated client", a)
		}
		seen[k] = true
	}
	if slices.Equal(a, c) {
		t.Fatalf("rounds 3 and 4 selected the same clients %v", a)
	}
	if got := SelectClients(1, 0, 5, 10); len(got) != 5 {
		t.Fatalf("asking for more clients than exist gave %d, want all 5", len(got))
	}
}

func TestEvenSplitCoversEveryRowOnce(t *testing.T) {
	for _, tc := range []struct{ n, k, parts int }{{10000, 10, 10}, {7, 3, 3}, {2, 5, 2}, {1, 1, 1}} {
		parts := evenSplit(tc.n, tc.k)
		if len(parts) != tc.parts {
			t.Fatalf("evenSplit(%d, %d) made %d parts, want %d", tc.n, tc.k, len(parts), tc.parts)
		}
		next := 0
		for _, p := range parts {
			if len(p) == 0 {
				t.Fatalf("evenSplit(%d, %d) has an empty part", tc.n, tc.k)
			}
			for _, i := range p {
				if i != next {
					t.Fatalf("evenSplit(%d, %d): row %d where %d was due", tc.n, tc.k, i, next)
				}
				next++
			}
		}
		if next != tc.n {
			t.Fatalf("evenSplit(%d, %d) covers %d rows", tc.n, tc.k, next)
		}
	}
}

func TestConfigCheckNamesEveryBadSetting(t *testing.T) {
	c := Config{Clients: 0, Fraction: 1.5, Mode: "sgd", LR: -1, Rounds: 0, Target: 2, MinTrainers: 0, OverSelect: -1, Eval: "remote"}
	err := c.check()
	if err == nil {
		t.Fatal("a config with every setting wrong passed")
	}
	for _, want := range []string{"-clients 0", "-fraction 1.5", `-mode "sgd"`, "-lr -1", "-rounds 0", "-target 2", "-min-trainers 0", "-over-select -1", `-eval "remote"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	good := Config{Clients: 100, Fraction: 0.1, Mode: "fedavg", Epochs: 1, Batch: 10, LR: 0.1, Rounds: 1, MinTrainers: 1, Eval: "trainers", EvalShards: 10}
	if err := good.check(); err != nil {
		t.Fatalf("the demo's settings were refused: %v", err)
	}
	if m := good.PerRound(); m != 10 {
		t.Fatalf("C=0.1 of K=100 gives m=%d, want 10", m)
	}
	good.Fraction = 0.001
	if m := good.PerRound(); m != 1 {
		t.Fatalf("a tiny C gives m=%d, want at least 1", m)
	}
}

func TestRoundLineLists(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{formatTasks(map[string]int{"trainer-10": 12, "trainer-2": 3, "a": 0}), "a:0,trainer-10:12,trainer-2:3"},
		{formatTasks(nil), "-"},
		{formatRates(map[string]float64{"b": 16249.9, "a": 950}), "a:0.9k,b:16.2k"},
		{formatRates(map[string]float64{}), "-"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
