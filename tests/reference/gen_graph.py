#!/usr/bin/python3
"""Write graph.bin: PyTorch's results for the joins of a model graph (add
and concat, forward and backward) and for a residual block whose input
feeds two layers, for tests/unit/test_layers.c to compare against.

Run with Debian's python3-torch under /usr/bin/python3 (see README.md).
The format is layers.bin's (gen_reference.py): inputs are float32 values
from a seeded generator, PyTorch computes in float64 and the results are
stored as float32.  Names are "<op>/<case>/<tensor>"; a case's inputs are
x0, x1, ..., dy the output's gradient, dx0, dx1, ... the inputs'.
"""
import struct
import sys

import torch
import torch.nn.functional as F

MAGIC = b"TDREF1\n\0"
gen = torch.Generator().manual_seed(20261207)
tensors = []


def rand(*shape, scale=1.0):
    t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
    return t.to(torch.float64)


def put(name, t):
    tensors.append((name, t.detach().to(torch.float32).contiguous()))


def joined(prefix, shapes, join):
    xs = [rand(*s).requires_grad_(True) for s in shapes]
    y = join(xs)
    dy = rand(*y.shape)
    dxs = torch.autograd.grad(y, xs, dy)
    for k, x in enumerate(xs):
        put(f"{prefix}x{k}", x)
    put(prefix + "dy", dy)
    put(prefix + "y", y)
    for k, dx in enumerate(dxs):
        put(f"{prefix}dx{k}", dx)


def add_all(xs):
    y = xs[0] + xs[1]
    for x in xs[2:]:
        y = y + x
    return y


# (case, input shapes, join): flat rows [n, f]; [n, C, H, W]; [n, T, D]
CASES = [
    ("add", "flat2", [(5, 6), (5, 6)], add_all),
    ("add", "spatial3", [(2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 4, 4)], add_all),
    ("concat", "flat", [(5, 3), (5, 4)], lambda xs: torch.cat(xs, 1)),
    ("concat", "spatial", [(2, 3, 4, 4), (2, 2, 4, 4), (2, 1, 4, 4)], lambda xs: torch.cat(xs, 1)),
    ("concat", "seq", [(2, 3, 4), (2, 3, 5)], lambda xs: torch.cat(xs, 2)),
]


def case_residual():
    """y = relu(x w^T + b) + x: x feeds the dense layer and the add, so its
    gradient is the sum of two shares."""
    x, w, b = rand(4, 6), rand(6, 6, scale=0.5), rand(6)
    for t in (x, w, b):
        t.requires_grad_(True)
    y = F.relu(F.linear(x, w, b)) + x
    dy = rand(4, 6)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    p = "residual/0/"
    for name, t in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx),
                    ("dw", dw), ("db", db)):
        put(p + name, t)


def write(path):
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(tensors))
    for name, t in tensors:
        raw = name.encode("ascii")
        out += struct.pack("<H", len(raw)) + raw
        out += struct.pack("<B", t.dim())
        out += struct.pack("<%dI" % t.dim(), *t.shape)
        out += struct.pack("<%df" % t.numel(), *t.flatten().tolist())
    with open(path, "wb") as f:
        f.write(out)
    return len(out)


def main():
    torch.use_deterministic_algorithms(True)
    for op, name, shapes, join in CASES:
        joined(f"{op}/{name}/", shapes, join)
    case_residual()
    path = sys.argv[1] if len(sys.argv) > 1 else "graph.bin"
    size = write(path)
    print(f"{path}: {len(tensors)} tensors, {size} bytes (torch {torch.__version__})")


if __name__ == "__main__":
    main()
