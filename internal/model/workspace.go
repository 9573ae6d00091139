package model

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"fedgather/internal/data"
)

// DefaultMaxBatch is the evaluation batch size NewWorkspace uses when it is
// given a non-positive maxBatch.
const DefaultMaxBatch = 256

// WorkspaceOf holds all buffers for training and evaluating one Spec with
// element type T; it is reused across calls and is not safe for concurrent
// use. Training uses WorkspaceOf[float32] through [Workspace];
// WorkspaceOf[float64] runs the identical algorithm in double precision and
// exists for gradient checking and numerical tests.
//
// maxBatch only sets how many rows are processed at a time: losses,
// gradients and trained parameters are bit for bit the same whatever it is
// (every sum runs over rows in the same order), so differently configured
// trainers agree. The openblas build keeps that for minibatch SGD, but
// OpenBLAS orders its sums over rows by matrix size, so there Gradient and
// full-batch SGD depend on maxBatch at the level of rounding (a fixed
// maxBatch still gives identical results run after run).
//
// The first layer exploits inputs that are mostly zeros, as MNIST's are
// (about 81% of pixels): each batch is compacted to its non-zero entries,
// and the forward pass and the weight update touch only the weights those
// entries multiply; the first layer computes no input delta. For the
// duration of a call the first layer's weights live transposed in the
// workspace and are written back to params when SGD returns. Later layers
// skip the zero deltas of switched-off ReLUs in their backward pass. See
// sparse.go.
//
// Methods panic when params or grad do not have length Spec().NumParams(),
// when the dataset's Dim is not the model's input width, or when a label is
// outside [0, classes): those are programming errors, not data errors, and
// the data package validates what it loads.
type WorkspaceOf[T Float] struct {
	spec     Spec
	layers   []Layer
	nparams  int
	classes  int
	maxBatch int

	rows  int     // row capacity of y, act and delta (and of x or in, whichever is in use)
	y     []int32 // rows: the current batch's labels
	act   [][]T   // act[l]: rows × layers[l].Out, output of layer l (ReLU applied on hidden layers; logits on the last)
	delta [][]T   // delta[l]: rows × layers[l].Out, d(loss)/d(pre-activation of layer l)

	// The first layer works on a transposed copy of its weights, wt
	// (In×Out), loaded from the parameters when a call starts and, for SGD,
	// stored back when it ends; see sparse.go. Its inputs are either dense
	// (x) or, when they are mostly zeros, the CSR form in; inT is in grouped
	// by column for the weight update.
	wt     []T  // Sizes[0] × Sizes[1]
	gt     []T  // Sizes[0] × Sizes[1]: Gradient's first-layer weight gradient; allocated on first use
	sparse bool // the current call's first layer uses in and inT rather than x
	path   inputPath
	x      []T // rows × Sizes[0]: the current batch's dense inputs, allocated on first use
	in     csr[T]
	inT    csc[T]
	update updatePath

	// Layers after the first either call gemm or use the package's own
	// kernels (see ownKernels): dots forward, and backward accSegs over the
	// layer's non-zero deltas, which dz holds by row and dzT by column.
	dz     csr[T]
	dzT    csc[T]
	dotBuf []T // twice the widest layer: two rows' dot products
	hidden hiddenPath

	// Bias gradients are column sums of deltas, taken with accSegs over one
	// segment holding every row: alphas[r] = alpha (set by backward),
	// iota[r] = r.
	alphas []T
	iota   []int32
	colEnd [1]int32

	exps []float64 // classes: softmax's exponentials for one row

	grad []T   // NumParams; allocated on first full-batch SGD
	perm []int // example order for SGD
	pcg  rand.PCG
}

// inputPath selects how the first layer treats its inputs. Only tests set
// anything but inputAuto.
type inputPath uint8

const (
	inputAuto   inputPath = iota // sparse when the data are (see chooseSparse)
	inputSparse                  // always the sparse kernel
	inputDense                   // always gemm
)

// updatePath selects how the sparse first layer updates its weights. Only
// tests set anything but updateAuto.
type updatePath uint8

const (
	updateAuto    updatePath = iota // scatter when the layer has at most scatterMaxOut outputs
	updateScatter                   // scatterSegs over the CSR batch
	updateColumns                   // accSegs over the CSC batch
)

// scatterMaxOut is the widest first layer whose sparse weight update goes
// row by row (scatterSegs) rather than column by column (accSegs over the
// CSC form). The row form skips building the CSC form but loads and stores
// a weight row per entry, which pays while the weights stay in cache:
// logistic regression's 784×10 fits in L1, the 2NN's 784×200 does not.
const scatterMaxOut = 32

// scatterUpdate reports whether the sparse first layer, with out outputs,
// updates its weights with scatterSegs.
func (w *WorkspaceOf[T]) scatterUpdate(out int) bool {
	switch w.update {
	case updateScatter:
		return true
	case updateColumns:
		return false
	}
	return out <= scatterMaxOut
}

// hiddenPath selects how layers after the first compute their products.
// Only tests set anything but hiddenAuto.
type hiddenPath uint8

const (
	hiddenAuto hiddenPath = iota // the backend's choice, ownKernelsMaxRows
	hiddenOwn                    // dots and accSegs
	hiddenGemm                   // gemm
)

// ownKernels reports whether layers after the first use the package's own
// kernels rather than gemm for a batch of rows rows: always with gonum,
// and with OpenBLAS for small batches, where its gemm is slower (see
// ownKernelsMaxRows).
func (w *WorkspaceOf[T]) ownKernels(rows int) bool {
	switch w.hidden {
	case hiddenOwn:
		return true
	case hiddenGemm:
		return false
	}
	return rows <= ownKernelsMaxRows
}

// NewWorkspaceOf returns a workspace for s with element type T. maxBatch is
// the number of rows Evaluate and Gradient process at a time and the initial
// buffer capacity; a non-positive value means DefaultMaxBatch. SGD with a
// larger batch grows the buffers once. It panics if s has fewer than two
// sizes or a non-positive size.
func NewWorkspaceOf[T Float](s Spec, maxBatch int) *WorkspaceOf[T] {
	if len(s.Sizes) < 2 {
		panic(fmt.Sprintf("model: NewWorkspace: spec %s has %d sizes, expected at least 2 (inputs and classes)", s, len(s.Sizes)))
	}
	for i, v := range s.Sizes {
		if v <= 0 {
			panic(fmt.Sprintf("model: NewWorkspace: spec %s has size %d at position %d, expected a positive size", s, v, i))
		}
	}
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	s.Sizes = append([]int(nil), s.Sizes...) // the workspace must not see later edits
	ls := s.Layers()
	w := &WorkspaceOf[T]{
		spec:     s,
		layers:   ls,
		nparams:  s.NumParams(),
		classes:  s.Sizes[len(s.Sizes)-1],
		maxBatch: maxBatch,
		act:      make([][]T, len(ls)),
		delta:    make([][]T, len(ls)),
		wt:       make([]T, ls[0].In*ls[0].Out),
		exps:     make([]float64, s.Sizes[len(s.Sizes)-1]),
		dotBuf:   make([]T, 2*slices.Max(s.Sizes)),
	}
	w.grow(maxBatch)
	return w
}

// Spec returns the spec the workspace was built for.
func (w *WorkspaceOf[T]) Spec() Spec {
	s := w.spec
	s.Sizes = append([]int(nil), s.Sizes...)
	return s
}

// MaxBatch returns the number of rows Evaluate and Gradient process at a time.
func (w *WorkspaceOf[T]) MaxBatch() int { return w.maxBatch }

// grow makes the batch buffers hold at least rows rows.
func (w *WorkspaceOf[T]) grow(rows int) {
	if rows <= w.rows {
		return
	}
	w.y = make([]int32, rows)
	w.alphas = make([]T, rows)
	w.iota = make([]int32, rows)
	for r := range w.iota {
		w.iota[r] = int32(r)
	}
	for l, ly := range w.layers {
		w.act[l] = make([]T, rows*ly.Out)
		w.delta[l] = make([]T, rows*ly.Out)
	}
	w.rows = rows
}

// begin prepares a call on ds that processes up to rows rows at a time:
// it chooses the first layer's path, sizes the buffers and loads the first
// layer's weights from params into wt.
func (w *WorkspaceOf[T]) begin(params []T, ds *data.Dataset, rows int) {
	w.grow(rows)
	in := w.spec.Sizes[0]
	w.sparse = w.chooseSparse(ds)
	if w.sparse {
		w.in.reserve(w.rows, in)
	} else if len(w.x) < w.rows*in {
		w.x = make([]T, w.rows*in)
	}
	if w.ownKernels(w.rows) && len(w.layers) > 1 {
		widest := 0
		for _, ly := range w.layers[1:] {
			widest = max(widest, ly.Out)
		}
		w.dz.reserve(w.rows, widest)
	}
	ly := w.layers[0]
	transpose(w.wt, params[ly.WOff:ly.BOff], ly.Out, ly.In)
}

// chooseSparse reports whether the first layer should take the sparse path
// for ds: always with the gonum backend, and with OpenBLAS when at most a
// fraction sparseInputMax of the inputs are non-zero, judged from up to 256
// rows spread evenly over ds. The choice depends only on ds, never on the
// batch size or MaxBatch, so results stay independent of how rows are
// grouped.
func (w *WorkspaceOf[T]) chooseSparse(ds *data.Dataset) bool {
	switch w.path {
	case inputSparse:
		return true
	case inputDense:
		return false
	}
	if sparseInputMax >= 1 {
		return true
	}
	n := ds.Len()
	step := max(1, n/256)
	var nonzero, total int
	for i := 0; i < n; i += step {
		for _, v := range ds.Row(i) {
			if v != 0 {
				nonzero++
			}
		}
		total += ds.Dim
	}
	return float64(nonzero) <= sparseInputMax*float64(total)
}

// check panics unless params and ds fit the workspace's spec.
func (w *WorkspaceOf[T]) check(op string, params []T, ds *data.Dataset) {
	if len(params) != w.nparams {
		panic(fmt.Sprintf("model: %s: params has length %d, expected NumParams() = %d for %s", op, len(params), w.nparams, w.spec))
	}
	if ds.Dim != w.spec.Sizes[0] {
		panic(fmt.Sprintf("model: %s: dataset has Dim %d, expected the model's %d inputs (%s)", op, ds.Dim, w.spec.Sizes[0], w.spec))
	}
	if len(ds.X) != len(ds.Y)*ds.Dim {
		panic(fmt.Sprintf("model: %s: dataset has %d feature values for %d labels of Dim %d, expected %d", op, len(ds.X), len(ds.Y), ds.Dim, len(ds.Y)*ds.Dim))
	}
}

// SGD runs epochs epochs of minibatch SGD on ds, updating params in place,
// and returns the mean training loss over all examples seen (each example's
// loss is taken in the forward pass just before the step its batch makes).
//
// Each epoch visits the examples in an order shuffled by a PCG seeded with
// seed, so the same seed gives bit-identical results. The last partial batch
// of an epoch is used (PyTorch DataLoader drop_last=False). The loss is the
// mean softmax cross-entropy over the batch and the step is
// params -= lr * grad; for minibatches the step is fused into the backward
// pass (the weight gradient is accumulated straight into params by gemm with
// alpha = -lr).
//
// batch <= 0 means the whole dataset as one batch (FedSGD): each epoch then
// computes Gradient over ds in dataset order and steps
// params[i] -= lr*grad[i]; no shuffle is needed. A batch larger than the
// dataset is one batch of the whole (shuffled) dataset.
//
// Steady state allocates nothing: buffers grow only when a batch or dataset
// is larger than any seen before. An empty dataset or epochs <= 0 leaves
// params unchanged and returns 0.
func (w *WorkspaceOf[T]) SGD(params []T, ds *data.Dataset, epochs, batch int, lr T, seed uint64) (meanLoss float64) {
	w.check("SGD", params, ds)
	n := ds.Len()
	if n == 0 || epochs <= 0 {
		return 0
	}
	var total float64
	if batch <= 0 {
		if len(w.grad) != w.nparams {
			w.grad = make([]T, w.nparams)
		}
		g := w.grad
		for range epochs {
			total += w.gradient(params, g, ds) // the epoch's mean loss
			for i := range params {
				params[i] -= T(lr * g[i]) // the conversion forbids FMA fusion: one rounding of lr*g, then one of the difference
			}
		}
		return total / float64(epochs)
	}

	if cap(w.perm) < n {
		w.perm = make([]int, n)
	}
	perm := w.perm[:n]
	for i := range perm {
		perm[i] = i
	}
	w.pcg.Seed(seed, shuffleStream)
	b := min(batch, n)
	w.begin(params, ds, b)
	for range epochs {
		shuffle(&w.pcg, perm)
		for lo := 0; lo < n; lo += b {
			hi := min(lo+b, n)
			idx := perm[lo:hi]
			rows := len(idx)
			next := -1
			if hi < n {
				next = perm[hi]
			}
			w.gatherIdx(ds, idx, next)
			w.forward(params, rows)
			total, _ = w.softmax(total, rows, 1/float64(rows), true)
			w.backward(params, rows, params, w.wt, -lr, 1)
		}
	}
	// Store the trained first-layer weights back in PyTorch layout.
	ly := w.layers[0]
	transpose(params[ly.WOff:ly.BOff], w.wt, ly.In, ly.Out)
	return total / (float64(epochs) * float64(n))
}

// Gradient computes the gradient of the mean loss over all rows of ds into
// grad (length NumParams), processing MaxBatch rows at a time, and returns
// the mean loss. It is the FedSGD client computation. For an empty dataset
// grad is zeroed and the loss is 0.
func (w *WorkspaceOf[T]) Gradient(params, grad []T, ds *data.Dataset) (meanLoss float64) {
	w.check("Gradient", params, ds)
	if len(grad) != w.nparams {
		panic(fmt.Sprintf("model: Gradient: grad has length %d, expected NumParams() = %d for %s", len(grad), w.nparams, w.spec))
	}
	return w.gradient(params, grad, ds)
}

func (w *WorkspaceOf[T]) gradient(params, grad []T, ds *data.Dataset) float64 {
	n := ds.Len()
	if n == 0 {
		clear(grad)
		return 0
	}
	w.begin(params, ds, w.maxBatch)
	ly := w.layers[0]
	if len(w.gt) != ly.In*ly.Out {
		w.gt = make([]T, ly.In*ly.Out)
	}
	scale := 1 / float64(n)
	var total float64
	for lo := 0; lo < n; lo += w.maxBatch {
		rows := min(w.maxBatch, n-lo)
		w.gatherRange(ds, lo, rows)
		w.forward(params, rows)
		total, _ = w.softmax(total, rows, scale, true)
		var beta T // the first chunk overwrites grad, later chunks add to it
		if lo > 0 {
			beta = 1
		}
		w.backward(params, rows, grad, w.gt, 1, beta)
	}
	transpose(grad[ly.WOff:ly.BOff], w.gt, ly.In, ly.Out)
	return total * scale
}

// Evaluate returns the accuracy in [0,1] (a prediction is the first class
// with the largest logit) and the mean cross-entropy loss over ds,
// processing MaxBatch rows at a time. An empty dataset gives 0, 0.
func (w *WorkspaceOf[T]) Evaluate(params []T, ds *data.Dataset) (accuracy, loss float64) {
	w.check("Evaluate", params, ds)
	n := ds.Len()
	if n == 0 {
		return 0, 0
	}
	w.begin(params, ds, w.maxBatch)
	var total float64
	var correct int
	for lo := 0; lo < n; lo += w.maxBatch {
		rows := min(w.maxBatch, n-lo)
		w.gatherRange(ds, lo, rows)
		w.forward(params, rows)
		var c int
		total, c = w.softmax(total, rows, 0, false)
		correct += c
	}
	return float64(correct) / float64(n), total / float64(n)
}

// Workspace holds all buffers for training/evaluating one Spec in float32;
// reused across calls; not safe for concurrent use. It is a
// WorkspaceOf[float32]; see there for the panics.
type Workspace struct {
	core *WorkspaceOf[float32]
}

// NewWorkspace returns a float32 workspace for s. maxBatch is the number of
// rows Evaluate and Gradient process at a time and the initial buffer
// capacity; a non-positive value means DefaultMaxBatch.
func NewWorkspace(s Spec, maxBatch int) *Workspace {
	return &Workspace{core: NewWorkspaceOf[float32](s, maxBatch)}
}

// Spec returns the spec the workspace was built for.
func (w *Workspace) Spec() Spec { return w.core.Spec() }

// MaxBatch returns the number of rows Evaluate and Gradient process at a time.
func (w *Workspace) MaxBatch() int { return w.core.maxBatch }

// SGD runs epochs epochs of minibatch SGD on ds, updating params in place.
// batch <= 0 means the whole dataset as one batch. Each epoch visits
// examples in an order shuffled by a PCG seeded with seed (the same seed
// gives bit-identical results). The last partial batch is used (like PyTorch
// DataLoader drop_last=False). Loss is mean softmax cross-entropy over the
// batch; the step is params -= lr * grad. It returns the mean training loss
// over all examples seen. No allocation per batch (buffers grow only if a
// batch is larger than ever before). See WorkspaceOf.SGD for details.
func (w *Workspace) SGD(params []float32, ds *data.Dataset, epochs, batch int, lr float32, seed uint64) (meanLoss float64) {
	return w.core.SGD(params, ds, epochs, batch, lr, seed)
}

// Gradient computes the mean-loss gradient over the rows of ds into grad
// (len NumParams) and returns the mean loss. (Used for FedSGD.)
func (w *Workspace) Gradient(params, grad []float32, ds *data.Dataset) (meanLoss float64) {
	return w.core.Gradient(params, grad, ds)
}

// Evaluate returns accuracy in [0,1] and mean cross-entropy loss over ds,
// processing in batches of MaxBatch rows.
func (w *Workspace) Evaluate(params []float32, ds *data.Dataset) (accuracy, loss float64) {
	return w.core.Evaluate(params, ds)
}
