#!/usr/bin/python3
"""Evaluate a fedgather model in PyTorch on the MNIST test set.

Usage:
    /usr/bin/python3 examples/pytorch/evaluate.py MODEL.safetensors [--data DIR] [--threads N]

MODEL.safetensors is a file the aggregator wrote with -export DIR (DIR/model.safetensors)
or served at GET /v1/model. The script reads it without the safetensors package (Debian does
not ship one): an 8-byte little-endian header length, a JSON header, then raw little-endian
float32 tensors. It rebuilds the model as nn.Linear layers fc1, fc2, ... with ReLU between
them, loads the weights with load_state_dict(strict=True), evaluates on
DIR/t10k-images-idx3-ubyte.gz and DIR/t10k-labels-idx1-ubyte.gz (pixels scaled to [0, 1] as
p/255, like the aggregator) and prints

    accuracy=0.XXXX loss=0.XXXX

Run it with Debian's interpreter, /usr/bin/python3, which has python3-torch and python3-numpy;
another python3 earlier on PATH may lack them. Exit status: 0 on success, 2 for bad usage or
a file that cannot be read as a fedgather model, 1 if torch or numpy is missing.
"""

import argparse
import gzip
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        "evaluate.py: %s\nrun it with /usr/bin/python3 (Debian's python3-torch and python3-numpy)\n" % exc
    )
    sys.exit(1)

MAX_HEADER = 100 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FormatError(Exception):
    """The file is not a safetensors file holding fc1, fc2, ... float32 layers."""


def read_safetensors(path):
    """Return (tensors, metadata): a dict name -> numpy float32 array and the string metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:6] == b"ARROW1":
        raise FormatError("this is an Arrow IPC file (the ?format=arrow export); this script reads the safetensors export")
    if len(blob) < 8:
        raise FormatError("truncated: %d bytes, but a safetensors file starts with an 8-byte header length" % len(blob))
    (n,) = struct.unpack("<Q", blob[:8])
    if n < 2 or n > MAX_HEADER:
        raise FormatError("header length %d: expected 2 to %d bytes of JSON" % (n, MAX_HEADER))
    if 8 + n > len(blob):
        raise FormatError("truncated header: the header length says %d bytes but only %d follow" % (n, len(blob) - 8))
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError("header is not JSON: %s" % exc)
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    data = memoryview(blob)[8 + n :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError("tensor %r: expected exactly dtype, shape and data_offsets" % name)
        if entry["dtype"] != "F32":
            raise FormatError("tensor %r has dtype %r; only F32 is supported" % (name, entry["dtype"]))
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(x) for x in entry["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= len(data) or end - begin != 4 * count:
            raise FormatError(
                "tensor %r: data_offsets [%d, %d] do not fit shape %s in %d bytes of data" % (name, begin, end, shape, len(data))
            )
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape).astype(np.float32)
    return tensors, metadata


class MLP(nn.Module):
    """nn.Linear layers fc1, fc2, ... with ReLU between them: the fedgather MLP."""

    def __init__(self, sizes):
        super().__init__()
        self.depth = len(sizes) - 1
        for i in range(self.depth):
            setattr(self, "fc%d" % (i + 1), nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x):
        for i in range(1, self.depth + 1):
            x = getattr(self, "fc%d" % i)(x)
            if i < self.depth:
                x = torch.relu(x)
        return x


def layer_sizes(tensors):
    """Infer [inputs, h1, ..., classes] from fc1.weight, fc2.weight, ..."""
    sizes = []
    k = 1
    while "fc%d.weight" % k in tensors:
        w = tensors["fc%d.weight" % k]
        if w.ndim != 2:
            raise FormatError("fc%d.weight has shape %s; expected [out, in]" % (k, list(w.shape)))
        if not sizes:
            sizes.append(w.shape[1])
        elif w.shape[1] != sizes[-1]:
            raise FormatError("fc%d.weight has %d inputs but fc%d has %d outputs" % (k, w.shape[1], k - 1, sizes[-1]))
        sizes.append(w.shape[0])
        k += 1
    if not sizes:
        raise FormatError("no tensor fc1.weight; tensors are %s" % sorted(tensors))
    return sizes


def read_idx(path, magic, ndims):
    """Read a gzip-compressed big-endian IDX file into a uint8 numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndims:
        raise FormatError("%s: truncated IDX header" % path)
    (got,) = struct.unpack(">I", raw[:4])
    if got != magic:
        raise FormatError("%s: magic %#x, expected %#x" % (path, got, magic))
    dims = struct.unpack(">%dI" % ndims, raw[4 : 4 + 4 * ndims])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndims)
    if body.size != int(np.prod(dims)):
        raise FormatError("%s: %d bytes of data for dimensions %s" % (path, body.size, list(dims)))
    return body.reshape(dims)


def main(argv):
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a fedgather safetensors model in PyTorch on the MNIST test set "
        "and print accuracy=A loss=L. Run with /usr/bin/python3.",
    )
    p.add_argument("model", help="a safetensors file written by the aggregator (-export DIR/model.safetensors)")
    p.add_argument("--data", default=os.path.join(REPO, "datasets", "mnist"), help="directory with t10k-*-idx*-ubyte.gz (default: the repository's datasets/mnist)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0 keeps PyTorch's default")
    p.add_argument("--batch", type=int, default=1000, help="evaluation batch size")
    args = p.parse_args(argv)
    if args.threads < 0 or args.batch < 1:
        p.error("--threads must be >= 0 and --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        tensors, metadata = read_safetensors(args.model)
        sizes = layer_sizes(tensors)
        images = read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"), 0x803, 3)
        labels = read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"), 0x801, 1)
    except (OSError, FormatError) as exc:
        sys.stderr.write("evaluate.py: %s\n" % exc)
        return 2
    if images.shape[0] != labels.shape[0]:
        sys.stderr.write("evaluate.py: %d test images but %d labels\n" % (images.shape[0], labels.shape[0]))
        return 2
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255))
    y = torch.from_numpy(labels.astype(np.int64))
    if x.shape[1] != sizes[0]:
        sys.stderr.write("evaluate.py: the model has %d inputs but the images have %d pixels\n" % (sizes[0], x.shape[1]))
        return 2

    net = MLP(sizes)
    try:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        sys.stderr.write("evaluate.py: the file does not match an MLP %s: %s\n" % ("-".join(map(str, sizes)), exc))
        return 2
    net.eval()

    correct, loss = 0, 0.0
    with torch.no_grad():
        for lo in range(0, x.shape[0], args.batch):
            logits = net(x[lo : lo + args.batch])
            target = y[lo : lo + args.batch]
            loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(dim=1) == target).sum().item()
    n = x.shape[0]
    model = metadata.get("model", "mlp")
    sys.stderr.write(
        "evaluate.py: %s %s, version %s, aggregator accuracy %s; %d test images\n"
        % (model, "-".join(map(str, sizes)), metadata.get("version", "?"), metadata.get("accuracy", "?"), n)
    )
    print("accuracy=%.4f loss=%.4f" % (correct / n, loss / n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
