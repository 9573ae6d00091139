"""PyTorch anchor for the MNIST training benchmark (the Go side is bench/train).

Trains one epoch of MNIST per configuration with plain minibatch SGD and prints
one JSON object per configuration on stdout, one per line:

    {"impl": "pytorch", "build": "torch-1.13.0a0", "model": "2nn", "batch": 10,
     "samples_per_s_median": 26900.0, "samples_per_s_min": 26500.0,
     "samples_per_s_max": 27200.0, "accuracy": 0.9581, "repeats": 3,
     "lr": 0.1, "epochs": 1, "threads": 1, "train_samples": 60000,
     "test_samples": 10000, "samples_per_cpu_s_median": 27000.0}

Fields (the same as bench/train prints; keep them stable, the bench command
that writes docs/PERFORMANCE.md parses them):

    impl                  "pytorch" here, "fedgather" for the Go program
    build                 "torch-" + torch.__version__ (Go: "gonum" or "openblas")
    model                 "logreg" (784-10) or "2nn" (784-200-200-10)
    batch                 minibatch size B
    samples_per_s_*       training examples per second over one epoch (median,
                          min and max over the repeats); only the training loop
                          is timed, not loading or evaluation
    accuracy              test-set accuracy after the epoch, in [0, 1] (median
                          over the repeats; with a fixed seed they agree)
    repeats               how many epochs were timed, each from a fresh model
    lr, epochs, threads, train_samples, test_samples
                          the settings, for the record
    samples_per_cpu_s_median
                          like samples_per_s_median but per second of CPU time
                          used by the process (time.process_time), which a busy
                          shared machine disturbs less than wall-clock time

Settings match bench/train: float32; torch.set_num_threads(1) and
OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1 (set before torch is imported); pixels
p/255 read from datasets/mnist/*.gz with gzip + numpy; nn.Linear layers with
every weight and bias drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
default range, which the Go model uses too); mean softmax cross-entropy;
torch.optim.SGD(lr) with no momentum or weight decay; each epoch visits the
training set in a fresh random order (torch.randperm) in batches of B, the
last partial batch included (drop_last=False). Batches are taken by indexing
the in-memory tensors with the permutation, which is what DataLoader with
shuffle=True yields but without its per-example collation overhead, so this
is the fast way to run PyTorch on this problem.

Repeats run round-robin over the configurations (repeat 1 of every
configuration, then repeat 2, ...) so that a slow spell on a shared machine
spreads over all of them. A short untimed warm-up precedes the first repeat.

Usage: python3 bench/pytorch_train.py [-repeats N] [-models logreg,2nn]
       [-batches 10,128] [-lr 0.1] [-seed 1] [-data datasets/mnist]
Needs Debian's python3-torch and python3-numpy (scripts/debian-packages), so
run it with the system interpreter they are installed for (/usr/bin/python3
on Debian); a python3 from pyenv or a virtualenv earlier on PATH may lack
torch, and the script then exits with a message saying so.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    sys.exit(f"pytorch_train.py: {e}; run it with the python3 that Debian's python3-torch and python3-numpy are installed for")

HIDDEN = {"logreg": [], "2nn": [200, 200]}


def read_idx(path, magic, ndims):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    head = np.frombuffer(raw, dtype=">u4", count=1 + ndims)
    if head[0] != magic:
        sys.exit(f"{path}: magic {head[0]:#x}, expected {magic:#x}")
    dims = [int(d) for d in head[1:]]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndims))
    if body.size != int(np.prod(dims)):
        sys.exit(f"{path}: {body.size} bytes of data, expected {int(np.prod(dims))}")
    return body.reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"), 0x803, 3)
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"), 0x801, 1)
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def build(name, inputs, classes, seed):
    sizes = [inputs] + HIDDEN[name] + [classes]
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(fan_in, fan_out)
        bound = 1 / fan_in**0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound)
            lin.bias.uniform_(-bound, bound)
        layers += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def train_epoch(model, opt, x, y, batch, gen):
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    for lo in range(0, n, batch):
        idx = perm[lo : lo + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model, x, y):
    correct = 0
    for lo in range(0, x.shape[0], 1000):
        correct += (model(x[lo : lo + 1000]).argmax(1) == y[lo : lo + 1000]).sum().item()
    return correct / x.shape[0]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-data", default=os.path.join(here, "..", "datasets", "mnist"))
    ap.add_argument("-models", default="logreg,2nn")
    ap.add_argument("-batches", default="10,128")
    ap.add_argument("-repeats", type=int, default=3)
    ap.add_argument("-lr", type=float, default=0.1)
    ap.add_argument("-seed", type=int, default=1)
    args = ap.parse_args()
    if args.repeats < 1:
        sys.exit("-repeats must be at least 1")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "t10k")
    configs = [(m, int(b)) for m in args.models.split(",") for b in args.batches.split(",")]
    for m, _ in configs:
        if m not in HIDDEN:
            sys.exit(f"unknown model {m!r}, expected one of {sorted(HIDDEN)}")

    # Warm-up: a few hundred untimed steps so that the first timed epoch does
    # not pay for lazy initialisation.
    for m, b in configs:
        model = build(m, xtr.shape[1], 10, args.seed)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        gen = torch.Generator().manual_seed(args.seed)
        train_epoch(model, opt, xtr[: 200 * b], ytr[: 200 * b], b, gen)

    rates = {c: [] for c in configs}
    cpus = {c: [] for c in configs}
    accs = {c: [] for c in configs}
    for _ in range(args.repeats):
        for m, b in configs:
            model = build(m, xtr.shape[1], 10, args.seed)
            opt = torch.optim.SGD(model.parameters(), lr=args.lr)
            gen = torch.Generator().manual_seed(args.seed)
            cpu0 = time.process_time()
            start = time.perf_counter()
            train_epoch(model, opt, xtr, ytr, b, gen)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            rates[(m, b)].append(xtr.shape[0] / elapsed)
            cpus[(m, b)].append(xtr.shape[0] / cpu if cpu > 0 else 0.0)
            accs[(m, b)].append(accuracy(model, xte, yte))

    for m, b in configs:
        r = rates[(m, b)]
        print(json.dumps({
            "impl": "pytorch",
            "build": "torch-" + torch.__version__.split("+")[0],
            "model": m,
            "batch": b,
            "samples_per_s_median": round(statistics.median(r), 1),
            "samples_per_s_min": round(min(r), 1),
            "samples_per_s_max": round(max(r), 1),
            "accuracy": round(statistics.median(accs[(m, b)]), 4),
            "repeats": args.repeats,
            "lr": args.lr,
            "epochs": 1,
            "threads": 1,
            "train_samples": xtr.shape[0],
            "test_samples": xte.shape[0],
            "samples_per_cpu_s_median": round(statistics.median(cpus[(m, b)]), 1),
        }), flush=True)


if __name__ == "__main__":
    main()
