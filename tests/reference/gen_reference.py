#!/usr/bin/python3
"""Write layers.bin: PyTorch's forward and backward results for each layer
type on small fixed inputs, for tests/unit/test_layers.c to compare against.

Run with Debian's python3-torch under /usr/bin/python3 (see README.md).
Inputs are float32 values from a seeded generator; PyTorch computes in
float64 on them and the results are stored as float32, so the reference is
the exact answer rounded once.

File format (little-endian): the 8 bytes b"TDREF1\\n\\0", a u32 tensor
count, then per tensor: u16 name length, the name (ASCII), u8 rank, u32
dims[rank], float32 data.  Names are "<op>/<case>/<tensor>"; a case's
scalar settings are its "params" tensor.
"""
import struct
import sys

import torch
import torch.nn.functional as F

MAGIC = b"TDREF1\n\0"
gen = torch.Generator().manual_seed(20240611)
tensors = []


def rand(*shape, scale=1.0, offset=0.0):
    """float32 values, handed to PyTorch as float64."""
    t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale + offset
    return t.to(torch.float64)


def away_from_zero(*shape, gap=0.05):
    """Values whose magnitude is at least gap: no ReLU kink nearby."""
    t = rand(*shape)
    return torch.where(t >= 0, t + gap, t - gap)


def distinct(*shape):
    """A shuffled ramp: no two values tie, so every max is unique."""
    n = 1
    for s in shape:
        n *= s
    perm = torch.randperm(n, generator=gen).to(torch.float64)
    return ((perm - n / 2) / 8.0).reshape(*shape)


def put(name, t):
    tensors.append((name, t.detach().to(torch.float32).contiguous()))


def grads(y, inputs, dy):
    return torch.autograd.grad(y, inputs, dy)


def case_dense():
    x, w, b = rand(5, 7), rand(4, 7), rand(4)
    dy = rand(5, 4)
    for t in (x, w, b):
        t.requires_grad_(True)
    y = F.linear(x, w, b)
    dx, dw, db = grads(y, (x, w, b), dy)
    p = "dense/0/"
    for name, t in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx),
                    ("dw", dw), ("db", db)):
        put(p + name, t)


CONV_CASES = [
    # x shape, w shape, (sh, sw), (ph, pw)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 2, 9, 8), (3, 2, 3, 2), (2, 1), (0, 1)),
    ((1, 3, 8, 8), (2, 3, 5, 5), (2, 2), (2, 2)),
    ((3, 4, 5, 5), (5, 4, 1, 1), (1, 1), (0, 0)),
    ((2, 2, 6, 7), (3, 2, 2, 4), (3, 2), (1, 0)),
]


def case_conv2d():
    for i, (xs, ws, stride, pad) in enumerate(CONV_CASES):
        x, w, b = rand(*xs), rand(*ws, scale=0.5), rand(ws[0])
        for t in (x, w, b):
            t.requires_grad_(True)
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        dy = rand(*y.shape)
        dx, dw, db = grads(y, (x, w, b), dy)
        p = f"conv2d/{i}/"
        put(p + "params", torch.tensor([stride[0], stride[1], pad[0], pad[1]]))
        for name, t in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx),
                        ("dw", dw), ("db", db)):
            put(p + name, t)


POOL_CASES = [
    # op, x shape, kernel, stride, padding, count_include_pad
    ("maxpool2d", (2, 3, 8, 8), (2, 2), (2, 2), (0, 0), 1),
    ("maxpool2d", (2, 2, 7, 9), (3, 3), (2, 2), (1, 1), 1),
    ("maxpool2d", (1, 3, 6, 5), (3, 2), (1, 2), (1, 0), 1),
    ("avgpool2d", (2, 3, 8, 8), (2, 2), (2, 2), (0, 0), 1),
    ("avgpool2d", (2, 2, 7, 9), (3, 3), (2, 2), (1, 1), 1),
    ("avgpool2d", (2, 2, 7, 9), (3, 3), (2, 2), (1, 1), 0),
    ("avgpool2d", (1, 3, 6, 5), (3, 2), (1, 2), (1, 0), 1),
]


def case_pool2d():
    count = {}
    for op, xs, k, s, pad, incl in POOL_CASES:
        i = count.get(op, 0)
        count[op] = i + 1
        x = (distinct(*xs) if op == "maxpool2d" else rand(*xs)).requires_grad_(True)
        if op == "maxpool2d":
            y = F.max_pool2d(x, k, s, pad)
        else:
            y = F.avg_pool2d(x, k, s, pad, count_include_pad=bool(incl))
        dy = rand(*y.shape)
        (dx,) = grads(y, (x,), dy)
        p = f"{op}/{i}/"
        put(p + "params", torch.tensor([k[0], k[1], s[0], s[1], pad[0], pad[1], incl]))
        for name, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
            put(p + name, t)


def case_activations():
    x = away_from_zero(4, 10).requires_grad_(True)
    y = F.relu(x)
    dy = rand(4, 10)
    (dx,) = grads(y, (x,), dy)
    for name, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
        put("relu/0/" + name, t)
    for kind in ("none", "tanh"):
        x = rand(96, scale=2.0).requires_grad_(True)
        y = F.gelu(x, approximate=kind)
        dy = rand(96)
        (dx,) = grads(y, (x,), dy)
        p = "gelu/%s/" % ("erf" if kind == "none" else "tanh")
        for name, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
            put(p + name, t)


def case_batchnorm():
    eps, momentum = 1e-5, 0.1
    x = rand(4, 3, 5, 5, scale=2.0, offset=0.5).requires_grad_(True)
    gamma = rand(3, scale=0.5, offset=1.0).requires_grad_(True)
    beta = rand(3).requires_grad_(True)
    rmean0, rvar0 = rand(3, scale=0.1), rand(3, scale=0.1, offset=1.0).abs()
    rmean, rvar = rmean0.clone(), rvar0.clone()
    y = F.batch_norm(x, rmean, rvar, gamma, beta, training=True, momentum=momentum, eps=eps)
    dy = rand(*y.shape)
    dx, dgamma, dbeta = grads(y, (x, gamma, beta), dy)
    y_eval = F.batch_norm(x, rmean, rvar, gamma, beta, training=False, eps=eps)
    p = "batchnorm2d/0/"
    put(p + "params", torch.tensor([eps, momentum]))
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta), ("running_mean", rmean0),
                    ("running_var", rvar0), ("dy", dy), ("y", y), ("dx", dx),
                    ("dgamma", dgamma), ("dbeta", dbeta), ("running_mean_out", rmean),
                    ("running_var_out", rvar), ("y_eval", y_eval)):
        put(p + name, t)


def case_layernorm():
    eps = 1e-5
    for i, (xs, norm) in enumerate((((6, 4, 5), (4, 5)), ((3, 16), (16,)))):
        x = rand(*xs, scale=1.5, offset=0.3).requires_grad_(True)
        gamma = rand(*norm, scale=0.5, offset=1.0).requires_grad_(True)
        beta = rand(*norm).requires_grad_(True)
        y = F.layer_norm(x, norm, gamma, beta, eps)
        dy = rand(*y.shape)
        dx, dgamma, dbeta = grads(y, (x, gamma, beta), dy)
        p = f"layernorm/{i}/"
        put(p + "params", torch.tensor([eps]))
        for name, t in (("x", x), ("gamma", gamma), ("beta", beta), ("dy", dy), ("y", y),
                        ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
            put(p + name, t)


def case_xent():
    for i, smoothing in enumerate((0.0, 0.1, 0.3)):
        z = rand(6, 5, scale=2.0).requires_grad_(True)
        labels = torch.randint(0, 5, (6,), generator=gen)
        loss = F.cross_entropy(z, labels, reduction="sum", label_smoothing=smoothing)
        (dz,) = grads(loss, (z,), torch.ones((), dtype=torch.float64))
        p = f"xent/{i}/"
        put(p + "params", torch.tensor([smoothing]))
        put(p + "logits", z)
        put(p + "labels", labels)
        put(p + "loss", loss.reshape(1))
        put(p + "dlogits", dz)


def case_sigmoid_tanh():
    for op, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        x = rand(4, 10, scale=2.0).requires_grad_(True)
        y = fn(x)
        dy = rand(4, 10)
        (dx,) = grads(y, (x,), dy)
        for name, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
            put(f"{op}/0/" + name, t)


# x shape, the softmax's dim: rows of features, a sequence [N, T, D], the
# channels of each pixel [N, C, H, W] (nn.Softmax(dim=1))
SOFTMAX_CASES = [((5, 7), 1), ((3, 4, 6), 2), ((2, 3, 4, 5), 1)]


def axes(shape, dim):
    """[outer, dim, inner] around dim."""
    outer = inner = 1
    for s in shape[:dim]:
        outer *= s
    for s in shape[dim + 1:]:
        inner *= s
    return [outer, shape[dim], inner]


def case_softmax():
    for i, (xs, dim) in enumerate(SOFTMAX_CASES):
        x = rand(*xs, scale=2.0).requires_grad_(True)
        y = F.softmax(x, dim=dim)
        dy = rand(*xs)
        (dx,) = grads(y, (x,), dy)
        p = f"softmax/{i}/"
        put(p + "params", torch.tensor(axes(xs, dim)))
        for name, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
            put(p + name, t)


def case_global_avg_pool():
    # [N, C, H, W]: AdaptiveAvgPool2d(1) then Flatten; a sequence [N, T, D]:
    # the mean over positions
    x = rand(2, 3, 4, 5).requires_grad_(True)
    y = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    seq = rand(3, 5, 4).requires_grad_(True)
    for i, (xin, out, params) in enumerate(((x, y, [6, 20, 1]),
                                            (seq, seq.mean(dim=1), [3, 5, 4]))):
        dy = rand(*out.shape)
        (dx,) = grads(out, (xin,), dy)
        p = f"global_avg_pool/{i}/"
        put(p + "params", torch.tensor(params))
        for name, t in (("x", xin), ("dy", dy), ("y", out), ("dx", dx)):
            put(p + name, t)


CONV1D_CASES = [
    # n, length, channels in, filters, kernel, stride, padding
    (2, 9, 3, 4, 3, 1, 1),
    (3, 10, 2, 3, 4, 2, 0),
    (1, 7, 4, 2, 5, 3, 2),
    (2, 6, 3, 5, 1, 1, 0),
    (18, 5, 2, 3, 3, 1, 1),  # more than a block of 16 samples
]


def case_conv1d():
    """Sequences are channels last, [N, L, C]: nn.Conv1d on the transpose."""
    for i, (n, length, c, f, k, stride, pad) in enumerate(CONV1D_CASES):
        x, w, b = rand(n, length, c), rand(f, c, k, scale=0.5), rand(f)
        for t in (x, w, b):
            t.requires_grad_(True)
        y = F.conv1d(x.transpose(1, 2), w, b, stride=stride, padding=pad).transpose(1, 2)
        dy = rand(*y.shape)
        dx, dw, db = grads(y, (x, w, b), dy)
        p = f"conv1d/{i}/"
        put(p + "params", torch.tensor([stride, pad]))
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
    # new cases go last: the generator's draws for the earlier ones stay put
    for case in (case_dense, case_conv2d, case_pool2d, case_activations, case_batchnorm,
                 case_layernorm, case_xent, case_sigmoid_tanh, case_softmax,
                 case_global_avg_pool, case_conv1d):
        case()
    path = sys.argv[1] if len(sys.argv) > 1 else "layers.bin"
    size = write(path)
    print(f"{path}: {len(tensors)} tensors, {size} bytes (torch {torch.__version__})")


if __name__ == "__main__":
    main()
