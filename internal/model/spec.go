// Package model implements the models trained by fedgather: multilayer
// perceptrons (logistic regression, the FedAvg paper's 2NN and custom MLPs)
// stored as one flat parameter vector with per-layer views, together with
// the forward pass, backpropagation, softmax cross-entropy loss and minibatch
// SGD.
//
// The parameter vector is laid out exactly like a PyTorch nn.Sequential of
// nn.Linear layers: fc1.weight ([Out, In], row-major), fc1.bias ([Out]),
// fc2.weight, fc2.bias, and so on. A vector exported from here therefore
// loads into the equivalent PyTorch module with a plain reshape.
//
// Training and evaluation run in a [Workspace], which owns every buffer a
// forward and backward pass needs, so steady-state training allocates
// nothing. The numeric core is generic over float32 and float64
// ([WorkspaceOf]); float32 is what training uses, float64 exists so the
// analytic gradient can be checked against finite differences.
package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// ErrSpec is wrapped by every error that Parse returns for a malformed or
// unsupported model description.
var ErrSpec = errors.New("model: invalid spec")

// maxParams bounds the size of a model Parse accepts, so that a typo such as
// "mlp:2000000000" is refused rather than attempted.
const maxParams = 1 << 30

// Spec describes a multilayer perceptron: Sizes[0] inputs, Sizes[len-1]
// classes, ReLU between dense layers, softmax cross-entropy loss.
//
// A Spec with len(Sizes) == 2 is multinomial logistic regression. Specs are
// values; the methods never modify Sizes.
type Spec struct {
	// Name is the model's canonical name as accepted by Parse, such as
	// "logreg", "2nn" or "mlp:300,100".
	Name string
	// Sizes lists the width of every layer, inputs first and classes last.
	Sizes []int
}

// Parse builds the Spec for a named model with the given number of input
// features and classes. Accepted names:
//
//	"logreg"          [inputs, classes]
//	"2nn"             [inputs, 200, 200, classes] (the FedAvg paper's 2NN; 199,210 parameters for MNIST)
//	"mlp:H1,H2,..."   [inputs, H1, H2, ..., classes]
//
// Any other name, a non-positive size, or a model with more than 2^30
// parameters gives an error wrapping ErrSpec.
func Parse(name string, inputs, classes int) (Spec, error) {
	if inputs <= 0 {
		return Spec{}, fmt.Errorf("%w: inputs must be positive, got %d", ErrSpec, inputs)
	}
	if classes < 2 {
		return Spec{}, fmt.Errorf("%w: classes must be at least 2, got %d", ErrSpec, classes)
	}
	var hidden []int
	switch {
	case name == "logreg":
	case name == "2nn":
		hidden = []int{200, 200}
	case strings.HasPrefix(name, "mlp:"):
		list := strings.TrimPrefix(name, "mlp:")
		if list == "" {
			return Spec{}, fmt.Errorf("%w: %q lists no hidden layer sizes (expected mlp:H1,H2,...)", ErrSpec, name)
		}
		for _, f := range strings.Split(list, ",") {
			h, err := strconv.Atoi(f)
			if err != nil {
				return Spec{}, fmt.Errorf("%w: hidden size %q in %q is not an integer: %w", ErrSpec, f, name, err)
			}
			if h <= 0 {
				return Spec{}, fmt.Errorf("%w: hidden size in %q must be positive, got %d", ErrSpec, name, h)
			}
			hidden = append(hidden, h)
		}
	default:
		return Spec{}, fmt.Errorf("%w: unknown model %q (expected \"logreg\", \"2nn\" or \"mlp:H1,H2,...\")", ErrSpec, name)
	}
	sizes := make([]int, 0, len(hidden)+2)
	sizes = append(sizes, inputs)
	sizes = append(sizes, hidden...)
	sizes = append(sizes, classes)
	canon := name
	if len(hidden) > 0 && strings.HasPrefix(name, "mlp:") {
		parts := make([]string, len(hidden))
		for i, h := range hidden {
			parts[i] = strconv.Itoa(h)
		}
		canon = "mlp:" + strings.Join(parts, ",")
	}
	s := Spec{Name: canon, Sizes: sizes}
	// Count in float64 so that absurd sizes cannot overflow int.
	var n float64
	for i := 1; i < len(sizes); i++ {
		n += float64(sizes[i-1]+1) * float64(sizes[i])
	}
	if n > maxParams {
		return Spec{}, fmt.Errorf("%w: %q has %.0f parameters, more than the limit of %d", ErrSpec, name, n, maxParams)
	}
	return s, nil
}

// String returns the spec's name followed by its layer sizes, for logs.
func (s Spec) String() string {
	parts := make([]string, len(s.Sizes))
	for i, v := range s.Sizes {
		parts[i] = strconv.Itoa(v)
	}
	return s.Name + "(" + strings.Join(parts, "-") + ")"
}

// NumParams returns the length of the flat parameter vector: the sum over
// dense layers of In*Out weights plus Out biases.
func (s Spec) NumParams() int {
	n := 0
	for i := 1; i < len(s.Sizes); i++ {
		n += (s.Sizes[i-1] + 1) * s.Sizes[i]
	}
	return n
}

// Layer is one dense layer's view into the flat parameter vector, laid out
// exactly like PyTorch nn.Linear: weight [Out, In] row-major, then bias
// [Out]. Layers are named fc1, fc2, ... in order; parameters are laid out
// fc1.weight, fc1.bias, fc2.weight, fc2.bias, ...
type Layer struct {
	// Name is "fc1", "fc2", ... counting from the input side.
	Name string
	// In and Out are the layer's input and output widths.
	In, Out int
	// WOff is the offset of the weight matrix (Out*In values) and BOff the
	// offset of the bias vector (Out values) in the parameter vector.
	WOff, BOff int
}

// Layers returns the dense layers of s, input side first. The result is a
// new slice on every call.
func (s Spec) Layers() []Layer {
	if len(s.Sizes) < 2 {
		return nil
	}
	ls := make([]Layer, len(s.Sizes)-1)
	off := 0
	for i := range ls {
		in, out := s.Sizes[i], s.Sizes[i+1]
		ls[i] = Layer{
			Name: "fc" + strconv.Itoa(i+1),
			In:   in,
			Out:  out,
			WOff: off,
			BOff: off + in*out,
		}
		off += (in + 1) * out
	}
	return ls
}

// Equal reports whether s and o have the same Name and the same Sizes.
// Use SameLayout to ignore the name.
func (s Spec) Equal(o Spec) bool {
	return s.Name == o.Name && s.SameLayout(o)
}

// SameLayout reports whether s and o have identical Sizes, and hence
// identical parameter layouts, whatever their names.
func (s Spec) SameLayout(o Spec) bool {
	return slices.Equal(s.Sizes, o.Sizes)
}

// Init fills params (which must have length s.NumParams()) like PyTorch's
// default nn.Linear initialisation: every weight and bias of a layer with In
// inputs is drawn from U(-1/sqrt(In), 1/sqrt(In)). The draws come from a
// math/rand/v2 PCG seeded with seed, in parameter order, so the same seed
// always gives the same vector. Init panics if len(params) is wrong.
func (s Spec) Init(params []float32, seed uint64) {
	if want := s.NumParams(); len(params) != want {
		panic(fmt.Sprintf("model: Init: params has length %d, expected NumParams() = %d for %s", len(params), want, s))
	}
	pcg := rand.NewPCG(seed, initStream)
	for _, l := range s.Layers() {
		bound := 1 / math.Sqrt(float64(l.In))
		seg := params[l.WOff : l.BOff+l.Out] // weights then biases, contiguous
		for i := range seg {
			seg[i] = float32(bound * (2*unitFloat(pcg) - 1))
		}
	}
}

// initStream is the second PCG seed word used by Init; shuffles use
// shuffleStream, so a model's initialisation and its data order are
// independent streams even when seeded with the same number.
const (
	initStream    = 0x6d6f64656c2d696e // "model-in"
	shuffleStream = 0x73687566666c6521 // "shuffle!"
)

// unitFloat returns a uniform float64 in [0, 1) built from the top 53 bits
// of one PCG output. It is spelled out here rather than taken from
// rand.Rand so the sequence is fixed by this code, not by a library version.
func unitFloat(p *rand.PCG) float64 {
	return float64(p.Uint64()>>11) * 0x1p-53
}
