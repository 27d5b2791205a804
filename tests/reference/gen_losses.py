#!/usr/bin/python3
"""Write losses.bin: PyTorch's losses and their gradients for
tests/unit/test_losses.c: BCEWithLogitsLoss, MSELoss, L1Loss and
CrossEntropyLoss with class ids and with probability (soft) targets, each
with reduction='sum', on small fixed logits and targets.

Run with Debian's python3-torch under /usr/bin/python3 (see README.md).
The format is layers.bin's (gen_reference.py): the 8 bytes b"TDREF1\\n\\0",
a u32 tensor count, then per tensor a u16 name length, the name (ASCII), a
u8 rank, u32 dims[rank] and float32 data, all little-endian.

PyTorch computes in float64 on the float32 inputs and the results are
rounded to float32 once, so the reference is the exact answer.
"""
import struct
import sys

import torch

MAGIC = b"TDREF1\n\0"
gen = torch.Generator().manual_seed(20261207)
tensors = []


def put(name, t):
    t = torch.as_tensor(t)
    tensors.append((name, t.detach().to(torch.float32).contiguous()))


def rand(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * scale


def case(kind, name, z, t, loss_fn):
    """Loss (reduction 'sum') and d loss / d logits of float32 z against t."""
    z64 = z.to(torch.float64).requires_grad_(True)
    t64 = t.to(torch.float64) if t.is_floating_point() else t
    loss = loss_fn(z64, t64)
    loss.backward()
    put("%s/%s/logits" % (kind, name), z)
    put("%s/%s/targets" % (kind, name), t.to(torch.float32))
    put("%s/%s/loss" % (kind, name), loss.reshape(1))
    put("%s/%s/dlogits" % (kind, name), z64.grad)


def main():
    torch.set_num_threads(1)
    rows, width = 9, 6
    # binary cross-entropy with logits: multi-label 0/1 targets and soft
    # ones, logits large enough that a naive log(sigmoid) would overflow
    z = rand(rows, width, scale=3.0)
    z[0, 0], z[1, 1], z[2, 2] = 40.0, -40.0, 0.0
    labels = (torch.rand(rows, width, generator=gen) < 0.4).to(torch.float32)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")
    case("bce", "labels", z, labels, bce)
    case("bce", "soft", z, torch.rand(rows, width, generator=gen), bce)
    # regression; the first row has an exact hit (L1's gradient is 0 there)
    z = rand(rows, width, scale=2.0)
    t = rand(rows, width, scale=2.0)
    t[0, 0] = z[0, 0]
    case("mse", "a", z, t, torch.nn.MSELoss(reduction="sum"))
    case("mae", "a", z, t, torch.nn.L1Loss(reduction="sum"))
    # one output per sample (a scalar regression)
    case("mse", "one", rand(rows, 1), rand(rows, 1), torch.nn.MSELoss(reduction="sum"))
    # cross-entropy over probability rows, one-hot rows, and class ids
    z = rand(rows, width, scale=2.0)
    z[3, 4] = 1e4  # large logits must not overflow
    p = torch.softmax(rand(rows, width, scale=2.0), dim=1)
    xent = torch.nn.CrossEntropyLoss(reduction="sum")
    case("xent_soft", "probs", z, p, xent)
    ids = torch.randint(0, width, (rows,), generator=gen)
    case("xent_soft", "onehot", z, torch.nn.functional.one_hot(ids, width).to(torch.float32),
         xent)
    case("xent", "ids", z, ids, xent)
    write(sys.argv[1] if len(sys.argv) > 1 else "losses.bin")


def write(path):
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(tensors))
    for name, t in tensors:
        raw = name.encode("ascii")
        out += struct.pack("<H", len(raw)) + raw
        out += struct.pack("<B", t.dim())
        out += struct.pack("<%dI" % t.dim(), *t.shape)
        out += t.numpy().astype("<f4").tobytes()
    with open(path, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
