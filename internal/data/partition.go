package data

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Second words of the PCG seeds, one per partitioner, so that the same user
// seed drives unrelated streams in different partitioners.
const (
	pcgStreamIID          = 0x6669_6431_6969_6401 // "fid1iid"
	pcgStreamPathological = 0x6669_6431_7061_7402 // "fid1pat"
	pcgStreamDirichlet    = 0x6669_6431_6469_7203 // "fid1dir"
)

// PathologicalShardsPerClient is the number of label-sorted shards each client
// receives under Partition{Kind: "pathological"}, as in the FedAvg paper.
const PathologicalShardsPerClient = 2

// PartitionIID shuffles the indices 0..n-1 with the seed and splits them into
// k disjoint parts that cover all n indices and differ in size by at most one
// (the first n%k parts get the extra index). Each part is returned sorted
// ascending. It needs k ≥ 1 and n ≥ k, so that no client is empty.
func PartitionIID(n, k int, seed uint64) ([][]int, error) {
	if err := checkClients(n, k); err != nil {
		return nil, fmt.Errorf("IID partition: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, pcgStreamIID))
	perm := rng.Perm(n)
	parts := make([][]int, k)
	base, extra := n/k, n%k
	at := 0
	for c := range parts {
		size := base
		if c < extra {
			size++
		}
		parts[c] = slices.Clone(perm[at : at+size])
		slices.Sort(parts[c])
		at += size
	}
	return parts, nil
}

// checkClients checks that n examples can be spread over k non-empty clients.
func checkClients(n, k int) error {
	if k < 1 {
		return fmt.Errorf("expected at least 1 client, got k=%d", k)
	}
	if n < k {
		return fmt.Errorf("expected at least one example per client, got %d examples for %d clients", n, k)
	}
	return nil
}

// PartitionPathological is the FedAvg paper's non-IID split: the example
// indices are sorted by label (stably, so ties keep dataset order), cut into
// k*shardsPerClient contiguous shards of near-equal size (exactly n/(k·s) when
// that divides; 60000 MNIST examples, k=100, s=2 give 200 shards of 300), and
// each client receives shardsPerClient shards chosen at random by the seed.
//
// A shard that straddles a label boundary holds two labels. Pure random
// assignment would then give some clients three or four labels; to keep the
// split's promise that a client sees at most shardsPerClient labels, such
// mixed shards are dealt first, each to its own client, and that client's
// remaining shards are drawn at random among the shards that keep its label
// count within shardsPerClient (falling back to any shard only when none is
// left). The order of clients is then shuffled. Each client's index list is
// returned sorted ascending. Labels must be non-negative.
func PartitionPathological(labels []int32, k, shardsPerClient int, seed uint64) ([][]int, error) {
	n := len(labels)
	if shardsPerClient < 1 {
		return nil, fmt.Errorf("pathological partition: expected at least 1 shard per client, got %d", shardsPerClient)
	}
	if err := checkClients(n, k); err != nil {
		return nil, fmt.Errorf("pathological partition: %w", err)
	}
	if shardsPerClient > n/k {
		return nil, fmt.Errorf("pathological partition: expected at least one example per shard, got %d examples for %d clients × %d shards",
			n, k, shardsPerClient)
	}
	for i, y := range labels {
		if y < 0 {
			return nil, fmt.Errorf("pathological partition: expected non-negative labels, got %d at index %d", y, i)
		}
	}
	numShards := k * shardsPerClient // ≤ n, so no overflow

	sorted := make([]int, n)
	for i := range sorted {
		sorted[i] = i
	}
	slices.SortStableFunc(sorted, func(a, b int) int { return cmp.Compare(labels[a], labels[b]) })

	// Shard j covers sorted[bound(j):bound(j+1)].
	bound := func(j int) int { return int(int64(j) * int64(n) / int64(numShards)) }
	shardLabels := make([][]int32, numShards)
	for j := range shardLabels {
		var ls []int32
		for _, i := range sorted[bound(j):bound(j+1)] {
			if len(ls) == 0 || ls[len(ls)-1] != labels[i] {
				ls = append(ls, labels[i])
			}
		}
		shardLabels[j] = ls
	}

	rng := rand.New(rand.NewPCG(seed, pcgStreamPathological))
	var mixed, pure []int
	for _, j := range rng.Perm(numShards) {
		if len(shardLabels[j]) > 1 {
			mixed = append(mixed, j)
		} else {
			pure = append(pure, j)
		}
	}

	// take removes and returns the first shard in *pool that keeps the label
	// set within shardsPerClient labels, or -1.
	take := func(pool *[]int, have []int32) int {
		for at, j := range *pool {
			if unionSize(have, shardLabels[j]) <= shardsPerClient {
				p := *pool
				p[at] = p[len(p)-1]
				*pool = p[:len(p)-1]
				return j
			}
		}
		return -1
	}
	clients := make([][]int, k)
	for c := range clients {
		var first int
		if len(mixed) > 0 {
			first, mixed = mixed[0], mixed[1:]
		} else {
			first, pure = pure[0], pure[1:]
		}
		shards := []int{first}
		have := slices.Clone(shardLabels[first])
		for len(shards) < shardsPerClient {
			j := take(&pure, have)
			if j < 0 {
				j = take(&mixed, have)
			}
			if j < 0 { // nothing fits: take any shard, preferring pure ones
				if len(pure) > 0 {
					j, pure = pure[0], pure[1:]
				} else {
					j, mixed = mixed[0], mixed[1:]
				}
			}
			shards = append(shards, j)
			have = mergeLabels(have, shardLabels[j])
		}
		var idx []int
		for _, j := range shards {
			idx = append(idx, sorted[bound(j):bound(j+1)]...)
		}
		slices.Sort(idx)
		clients[c] = idx
	}
	rng.Shuffle(len(clients), func(a, b int) { clients[a], clients[b] = clients[b], clients[a] })
	return clients, nil
}

// unionSize returns the number of distinct labels in a ∪ b.
func unionSize(a, b []int32) int {
	n := len(a)
	for _, y := range b {
		if !slices.Contains(a, y) {
			n++
		}
	}
	return n
}

// mergeLabels returns a with the labels of b that it lacks appended.
func mergeLabels(a, b []int32) []int32 {
	for _, y := range b {
		if !slices.Contains(a, y) {
			a = append(a, y)
		}
	}
	return a
}

// PartitionDirichlet gives each client a label distribution drawn from a
// symmetric Dirichlet(alpha): for every class, its examples are shuffled and
// split over the k clients in proportions drawn independently from
// Dir(alpha, …, alpha). Small alpha (0.1) gives each client a few dominant
// classes; large alpha (1000) approaches an IID split.
//
// No client is left empty: after the split, each empty client in turn (lowest
// index first) receives one example, chosen at random by the seed, from the
// client that then holds the most examples (lowest index on ties). This moves
// at most k-1 examples and needs n ≥ k. Labels must lie in [0, classes) and
// alpha must be positive and finite. Each client's index list is returned
// sorted ascending.
func PartitionDirichlet(labels []int32, classes, k int, alpha float64, seed uint64) ([][]int, error) {
	if classes < 1 {
		return nil, fmt.Errorf("dirichlet partition: expected at least 1 class, got %d", classes)
	}
	if err := checkAlpha(alpha); err != nil {
		return nil, fmt.Errorf("dirichlet partition: %w", err)
	}
	if err := checkClients(len(labels), k); err != nil {
		return nil, fmt.Errorf("dirichlet partition: %w", err)
	}
	byClass := make([][]int, classes)
	for i, y := range labels {
		if y < 0 || int(y) >= classes {
			return nil, fmt.Errorf("dirichlet partition: expected labels in [0, %d), got %d at index %d", classes, y, i)
		}
		byClass[y] = append(byClass[y], i)
	}

	rng := rand.New(rand.NewPCG(seed, pcgStreamDirichlet))
	clients := make([][]int, k)
	props := make([]float64, k)
	for _, idx := range byClass {
		rng.Shuffle(len(idx), func(a, b int) { idx[a], idx[b] = idx[b], idx[a] })
		sampleDirichlet(rng, alpha, props)
		nc := len(idx)
		cum, prev := 0.0, 0
		for c := range clients {
			cum += props[c]
			end := nc
			if c < k-1 {
				end = min(max(int(math.Round(cum*float64(nc))), prev), nc)
			}
			clients[c] = append(clients[c], idx[prev:end]...)
			prev = end
		}
	}

	for c := range clients {
		if len(clients[c]) > 0 {
			continue
		}
		donor := 0
		for d := range clients {
			if len(clients[d]) > len(clients[donor]) {
				donor = d
			}
		}
		from := clients[donor]
		at := rng.IntN(len(from))
		clients[c] = append(clients[c], from[at])
		from[at] = from[len(from)-1]
		clients[donor] = from[:len(from)-1]
	}
	for _, idx := range clients {
		slices.Sort(idx)
	}
	return clients, nil
}

// sampleDirichlet fills p with one draw from the symmetric Dirichlet(alpha)
// over len(p) categories. It normalises Gamma draws in log space, so that
// alpha far below 1 (whose Gamma draws underflow float64) still gives a
// proper distribution.
func sampleDirichlet(rng *rand.Rand, alpha float64, p []float64) {
	hi := math.Inf(-1)
	for i := range p {
		p[i] = logGamma(rng, alpha)
		hi = max(hi, p[i])
	}
	sum := 0.0
	for i := range p {
		p[i] = math.Exp(p[i] - hi)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
}

// logGamma returns the logarithm of one draw from Gamma(shape, 1), shape > 0,
// by Marsaglia and Tsang's squeeze method ("A simple method for generating
// gamma variables", 2000). For shape < 1 it draws G ~ Gamma(shape+1) and uses
// G·U^(1/shape) ~ Gamma(shape), returned as log G + log(U)/shape.
func logGamma(rng *rand.Rand, shape float64) float64 {
	if shape < 1 {
		u := 1 - rng.Float64() // (0, 1]: log is finite
		return logGamma(rng, shape+1) + math.Log(u)/shape
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		x2 := x * x
		if u < 1-0.0331*x2*x2 {
			return math.Log(d) + math.Log(v)
		}
		if math.Log(u) < 0.5*x2+d*(1-v+math.Log(v)) {
			return math.Log(d) + math.Log(v)
		}
	}
}

// Partition names a partitioning scheme, as parsed from a flag.
type Partition struct {
	Kind  string  // "iid", "pathological" or "dirichlet"
	Alpha float64 // Dirichlet concentration; used only when Kind is "dirichlet"
}

// ParsePartition parses "iid", "pathological" or "dirichlet:ALPHA" where ALPHA
// is a positive finite number such as 0.5. Anything else is an error that
// lists the accepted forms.
func ParsePartition(spec string) (Partition, error) {
	const forms = `"iid", "pathological" or "dirichlet:ALPHA" (e.g. "dirichlet:0.5")`
	switch {
	case spec == "iid" || spec == "pathological":
		return Partition{Kind: spec}, nil
	case spec == "dirichlet":
		return Partition{}, fmt.Errorf("partition %q: dirichlet needs a concentration, expected %s", spec, forms)
	case strings.HasPrefix(spec, "dirichlet:"):
		text := strings.TrimPrefix(spec, "dirichlet:")
		alpha, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return Partition{}, fmt.Errorf("partition %q: expected a number after \"dirichlet:\", got %q: %w", spec, text, err)
		}
		if err := checkAlpha(alpha); err != nil {
			return Partition{}, fmt.Errorf("partition %q: %w", spec, err)
		}
		return Partition{Kind: "dirichlet", Alpha: alpha}, nil
	default:
		return Partition{}, fmt.Errorf("partition %q: expected %s", spec, forms)
	}
}

// Split partitions a dataset with the given labels into k client index lists:
// "iid" uses PartitionIID, "pathological" uses PartitionPathological with
// PathologicalShardsPerClient shards per client, and "dirichlet" uses
// PartitionDirichlet with p.Alpha.
func (p Partition) Split(labels []int32, classes, k int, seed uint64) ([][]int, error) {
	switch p.Kind {
	case "iid":
		return PartitionIID(len(labels), k, seed)
	case "pathological":
		return PartitionPathological(labels, k, PathologicalShardsPerClient, seed)
	case "dirichlet":
		return PartitionDirichlet(labels, classes, k, p.Alpha, seed)
	default:
		return nil, fmt.Errorf("partition: expected kind \"iid\", \"pathological\" or \"dirichlet\", got %q", p.Kind)
	}
}

// String returns the spec that ParsePartition parses back to p: "iid",
// "pathological" or "dirichlet:ALPHA" with ALPHA in shortest form.
func (p Partition) String() string {
	if p.Kind == "dirichlet" {
		return "dirichlet:" + strconv.FormatFloat(p.Alpha, 'g', -1, 64)
	}
	return p.Kind
}

// checkAlpha requires a Dirichlet concentration that is positive and finite.
func checkAlpha(alpha float64) error {
	if !(alpha > 0) || math.IsInf(alpha, 0) {
		return fmt.Errorf("expected alpha > 0 and finite, got %v", alpha)
	}
	return nil
}
