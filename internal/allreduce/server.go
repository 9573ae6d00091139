package allreduce

import (
	"encoding/binary"
	"fmt"
	"math"
)

// ServerOptimizer turns the round's mean update into the next global model.
type ServerOptimizer interface {
	// Step applies the mean update delta (w_local − w_global, averaged) to
	// params in place.
	Step(params, delta []float32)
	// State returns the optimiser's state for a checkpoint, and SetState
	// restores it.
	State() []byte
	SetState(b []byte) error
	// String names the optimiser and its settings.
	String() string
}

// NewServerOptimizer builds the optimiser named by kind: "avg" (plain
// federated averaging, w += lr·Δ) or "avgm" (FedAvgM: v = β·v + Δ,
// w += lr·v).
func NewServerOptimizer(kind string, lr, momentum float64, n int) (ServerOptimizer, error) {
	if !(lr > 0) || math.IsInf(lr, 0) {
		return nil, fmt.Errorf("server learning rate %v: want a positive finite number", lr)
	}
	switch kind {
	case "avg":
		return &Average{LR: float32(lr)}, nil
	case "avgm":
		if !(momentum >= 0 && momentum < 1) {
			return nil, fmt.Errorf("server momentum %v: want 0 <= β < 1", momentum)
		}
		return &Momentum{LR: float32(lr), Beta: float32(momentum), v: make([]float32, n)}, nil
	}
	return nil, fmt.Errorf("server optimiser %q: want avg or avgm", kind)
}

// Average is FedAvg's server step: w += LR·Δ. With LR 1 the new model is the
// weighted mean of the clients' models.
type Average struct{ LR float32 }

// Step implements ServerOptimizer.
func (o *Average) Step(params, delta []float32) {
	lr := o.LR
	d := delta[:len(params)]
	for i := range params {
		params[i] += lr * d[i]
	}
}

// State implements ServerOptimizer; plain averaging has none.
func (o *Average) State() []byte { return nil }

// SetState implements ServerOptimizer.
func (o *Average) SetState(b []byte) error {
	if len(b) != 0 {
		return fmt.Errorf("avg server optimiser has no state, checkpoint holds %d bytes", len(b))
	}
	return nil
}

func (o *Average) String() string { return fmt.Sprintf("avg(lr=%g)", o.LR) }

// Momentum is FedAvgM (Hsu et al. 2019): v = β·v + Δ; w += LR·v.
type Momentum struct {
	LR, Beta float32
	v        []float32
}

// Step implements ServerOptimizer.
func (o *Momentum) Step(params, delta []float32) {
	v := o.v[:len(params)]
	d := delta[:len(params)]
	for i := range params {
		v[i] = o.Beta*v[i] + d[i]
		params[i] += o.LR * v[i]
	}
}

// State implements ServerOptimizer: the velocity as little-endian float32.
func (o *Momentum) State() []byte {
	b := make([]byte, 4*len(o.v))
	for i, x := range o.v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// SetState implements ServerOptimizer.
func (o *Momentum) SetState(b []byte) error {
	if len(b) != 4*len(o.v) {
		return fmt.Errorf("avgm state of %d bytes, want %d", len(b), 4*len(o.v))
	}
	for i := range o.v {
		o.v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return nil
}

func (o *Momentum) String() string { return fmt.Sprintf("avgm(lr=%g, β=%g)", o.LR, o.Beta) }
