package data

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestPartitionIID(t *testing.T) {
	tests := []struct {
		n, k int
		seed uint64
	}{
		{60000, 100, 1},
		{60000, 7, 2},
		{10, 3, 3},
		{5, 5, 4},
		{1, 1, 5},
	}
	for _, tc := range tests {
		parts, err := PartitionIID(tc.n, tc.k, tc.seed)
		if err != nil {
			t.Fatalf("PartitionIID(%d, %d): %v", tc.n, tc.k, err)
		}
		if len(parts) != tc.k {
			t.Fatalf("PartitionIID(%d, %d): %d parts", tc.n, tc.k, len(parts))
		}
		checkCover(t, parts, tc.n)
		for c, p := range parts {
			if d := len(p) - tc.n/tc.k; d < 0 || d > 1 {
				t.Errorf("PartitionIID(%d, %d): client %d has %d examples, expected %d or %d", tc.n, tc.k, c, len(p), tc.n/tc.k, tc.n/tc.k+1)
			}
		}
	}
	// A shuffle, not a contiguous split.
	parts, _ := PartitionIID(1000, 2, 9)
	if parts[0][len(parts[0])-1] < 500 || parts[1][0] >= 500 {
		t.Errorf("PartitionIID(1000, 2) looks unshuffled: part 0 ends at %d, part 1 starts at %d", parts[0][len(parts[0])-1], parts[1][0])
	}
}

func TestPartitionErrors(t *testing.T) {
	labels := []int32{0, 1, 2, 0, 1, 2}
	tests := []struct {
		name string
		run  func() ([][]int, error)
		want string
	}{
		{"iid no clients", func() ([][]int, error) { return PartitionIID(10, 0, 1) }, "at least 1 client, got k=0"},
		{"iid too few examples", func() ([][]int, error) { return PartitionIID(3, 4, 1) }, "3 examples for 4 clients"},
		{"iid negative n", func() ([][]int, error) { return PartitionIID(-1, 1, 1) }, "-1 examples"},
		{"pathological zero shards", func() ([][]int, error) { return PartitionPathological(labels, 2, 0, 1) }, "at least 1 shard per client, got 0"},
		{"pathological too many shards", func() ([][]int, error) { return PartitionPathological(labels, 2, 4, 1) }, "6 examples for 2 clients × 4 shards"},
		{"pathological negative label", func() ([][]int, error) { return PartitionPathological([]int32{0, -1}, 1, 1, 1) }, "non-negative labels, got -1 at index 1"},
		{"dirichlet zero alpha", func() ([][]int, error) { return PartitionDirichlet(labels, 3, 2, 0, 1) }, "alpha > 0 and finite, got 0"},
		{"dirichlet NaN alpha", func() ([][]int, error) { return PartitionDirichlet(labels, 3, 2, math.NaN(), 1) }, "got NaN"},
		{"dirichlet Inf alpha", func() ([][]int, error) { return PartitionDirichlet(labels, 3, 2, math.Inf(1), 1) }, "got +Inf"},
		{"dirichlet label range", func() ([][]int, error) { return PartitionDirichlet(labels, 2, 2, 1, 1) }, "labels in [0, 2), got 2 at index 2"},
		{"dirichlet no classes", func() ([][]int, error) { return PartitionDirichlet(labels, 0, 2, 1, 1) }, "at least 1 class"},
		{"dirichlet too many clients", func() ([][]int, error) { return PartitionDirichlet(labels, 3, 7, 1, 1) }, "6 examples for 7 clients"},
		{"split unknown kind", func() ([][]int, error) { return Partition{Kind: "random"}.Split(labels, 3, 2, 1) }, `got "random"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.run()
			wantErr(t, err, tc.want)
		})
	}
}

// labelFractions returns, per client, the fraction of its examples in each class.
func labelFractions(labels []int32, classes int, parts [][]int) [][]float64 {
	out := make([][]float64, len(parts))
	for c, p := range parts {
		out[c] = make([]float64, classes)
		for _, i := range p {
			out[c][labels[i]] += 1 / float64(len(p))
		}
	}
	return out
}

// meanMaxFraction is the mean over clients of the largest class fraction.
func meanMaxFraction(fr [][]float64) float64 {
	sum := 0.0
	for _, f := range fr {
		m := 0.0
		for _, v := range f {
			m = max(m, v)
		}
		sum += m
	}
	return sum / float64(len(fr))
}

func TestPartitionPathologicalMNIST(t *testing.T) {
	train, _ := mnist(t)
	for _, seed := range []uint64{0, 1, 2, 3, 42} {
		parts, err := PartitionPathological(train.Y, 100, 2, seed)
		if err != nil {
			t.Fatal(err)
		}
		if len(parts) != 100 {
			t.Fatalf("seed %d: %d clients, expected 100", seed, len(parts))
		}
		checkCover(t, parts, train.Len())
		twoLabels := 0
		for c, p := range parts {
			if len(p) != 600 {
				t.Errorf("seed %d: client %d has %d examples, expected 600", seed, c, len(p))
			}
			distinct := map[int32]bool{}
			for _, i := range p {
				distinct[train.Y[i]] = true
			}
			if len(distinct) > 2 {
				t.Errorf("seed %d: client %d has %d labels, expected at most 2", seed, c, len(distinct))
			}
			if len(distinct) == 2 {
				twoLabels++
			}
		}
		// Random pairing of ~20 shards per label: most clients get two labels.
		if twoLabels < 70 {
			t.Errorf("seed %d: only %d of 100 clients have two labels; the shard assignment looks unshuffled", seed, twoLabels)
		}
	}
}

func TestPartitionPathologicalSmall(t *testing.T) {
	tests := []struct {
		name   string
		labels []int32
		k, s   int
	}{
		{"uneven sizes", []int32{3, 1, 2, 0, 1, 2, 3, 0, 2, 1, 0}, 2, 2},
		{"one shard each", []int32{1, 0, 1, 0, 1, 0}, 3, 1},
		{"tiny classes", []int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1}, 2, 3},
		{"single client", []int32{2, 2, 1}, 1, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := PartitionPathological(tc.labels, tc.k, tc.s, 7)
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != tc.k {
				t.Fatalf("%d clients, expected %d", len(parts), tc.k)
			}
			checkCover(t, parts, len(tc.labels))
		})
	}
}

func TestPartitionDirichletMNIST(t *testing.T) {
	train, _ := mnist(t)
	tests := []struct {
		alpha          float64
		minMax, maxMax float64 // bounds on the mean max-class fraction
	}{
		{0.1, 0.5, 1},
		{1000, 0, 0.15},
	}
	for _, tc := range tests {
		parts, err := PartitionDirichlet(train.Y, 10, 100, tc.alpha, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkCover(t, parts, train.Len())
		for c, p := range parts {
			if len(p) == 0 {
				t.Errorf("alpha %v: client %d is empty", tc.alpha, c)
			}
		}
		got := meanMaxFraction(labelFractions(train.Y, 10, parts))
		t.Logf("alpha %v: mean max-class fraction %.3f", tc.alpha, got)
		if got < tc.minMax || got > tc.maxMax {
			t.Errorf("alpha %v: mean max-class fraction %.3f, expected in [%v, %v]", tc.alpha, got, tc.minMax, tc.maxMax)
		}
	}
}

func TestPartitionDeterminism(t *testing.T) {
	train, _ := mnist(t)
	labels := train.Y[:6000]
	kinds := []string{"iid", "pathological", "dirichlet:0.3"}
	for _, spec := range kinds {
		p, err := ParsePartition(spec)
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.Split(labels, 10, 20, 11)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := p.Split(labels, 10, 20, 11)
		c, _ := p.Split(labels, 10, 20, 12)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: same seed gave different partitions", spec)
		}
		if reflect.DeepEqual(a, c) {
			t.Errorf("%s: seeds 11 and 12 gave the same partition", spec)
		}
		checkCover(t, a, len(labels))
	}
}

func TestDirichletNoEmptyClients(t *testing.T) {
	// α tiny and many clients: nearly every class lands on one client, so
	// almost all clients start empty and must each be given an example.
	labels := make([]int32, 500)
	for i := range labels {
		labels[i] = int32(i % 5)
	}
	for _, alpha := range []float64{1e-3, 1e-300, 0.05} {
		parts, err := PartitionDirichlet(labels, 5, 100, alpha, 3)
		if err != nil {
			t.Fatal(err)
		}
		checkCover(t, parts, len(labels))
		for c, p := range parts {
			if len(p) == 0 {
				t.Fatalf("alpha %v: client %d is empty", alpha, c)
			}
		}
	}
	// n == k: every client ends with exactly one example.
	parts, err := PartitionDirichlet(labels[:20], 5, 20, 0.01, 4)
	if err != nil {
		t.Fatal(err)
	}
	for c, p := range parts {
		if len(p) != 1 {
			t.Fatalf("client %d has %d examples, expected 1", c, len(p))
		}
	}
}

func TestLogGammaMoments(t *testing.T) {
	// Gamma(a, 1) has mean a and variance a.
	rng := rand.New(rand.NewPCG(5, 6))
	const n = 200000
	for _, a := range []float64{0.1, 0.5, 1, 2.5, 30, 1000} {
		sum, sq := 0.0, 0.0
		for range n {
			g := math.Exp(logGamma(rng, a))
			sum += g
			sq += g * g
		}
		mean := sum / n
		variance := sq/n - mean*mean
		// Standard error of the mean is sqrt(a/n); allow 5 of them.
		if tol := 5 * math.Sqrt(a/n); math.Abs(mean-a) > tol {
			t.Errorf("Gamma(%v): sample mean %v, expected %v ± %v", a, mean, a, tol)
		}
		if math.Abs(variance-a)/a > 0.1 {
			t.Errorf("Gamma(%v): sample variance %v, expected about %v", a, variance, a)
		}
	}
}

func TestSampleDirichlet(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	p := make([]float64, 10)
	for _, alpha := range []float64{1e-300, 1e-3, 0.1, 1, 1e6} {
		sampleDirichlet(rng, alpha, p)
		sum := 0.0
		for _, v := range p {
			if !(v >= 0 && v <= 1) {
				t.Fatalf("alpha %v: proportion %v outside [0, 1]", alpha, v)
			}
			sum += v
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("alpha %v: proportions sum to %v", alpha, sum)
		}
	}
}

func TestParsePartition(t *testing.T) {
	tests := []struct {
		spec string
		want Partition
		err  string
	}{
		{spec: "iid", want: Partition{Kind: "iid"}},
		{spec: "pathological", want: Partition{Kind: "pathological"}},
		{spec: "dirichlet:0.5", want: Partition{Kind: "dirichlet", Alpha: 0.5}},
		{spec: "dirichlet:1000", want: Partition{Kind: "dirichlet", Alpha: 1000}},
		{spec: "dirichlet:1e-3", want: Partition{Kind: "dirichlet", Alpha: 0.001}},
		{spec: "", err: `partition "": expected "iid", "pathological" or "dirichlet:ALPHA"`},
		{spec: "IID", err: `partition "IID": expected`},
		{spec: "noniid", err: `partition "noniid": expected`},
		{spec: "dirichlet", err: "dirichlet needs a concentration"},
		{spec: "dirichlet:", err: `expected a number after "dirichlet:", got ""`},
		{spec: "dirichlet:abc", err: `got "abc"`},
		{spec: "dirichlet:0", err: "alpha > 0 and finite, got 0"},
		{spec: "dirichlet:-1", err: "got -1"},
		{spec: "dirichlet:NaN", err: "got NaN"},
		{spec: "dirichlet:inf", err: "got +Inf"},
		{spec: "dirichlet:1e999", err: "out of range"},
		{spec: "iid:2", err: "expected"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := ParsePartition(tc.spec)
			if tc.err != "" {
				wantErr(t, err, tc.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, expected %+v", got, tc.want)
			}
			back, err := ParsePartition(got.String())
			if err != nil || back != got {
				t.Fatalf("String() %q does not parse back: %+v, %v", got.String(), back, err)
			}
		})
	}
}
