#!/usr/bin/python3
"""Write seq.bin: PyTorch's forward and backward results for the sequence
layers (nn.Embedding, a learned positional embedding, nn.MultiheadAttention
with and without a causal mask, nn.Linear and nn.LayerNorm on [N, T, D]) on
small fixed inputs, for tests/unit/test_seq.c to compare against.

Run with Debian's python3-torch under /usr/bin/python3 (see README.md).
The same format and the same rule as gen_reference.py: float32 inputs from
a seeded generator, PyTorch computing in float64 on them, results rounded
to float32 once.  Names are "<op>/<case>/<tensor>"; a case's settings are
its "params" tensor; token ids are stored as floats.
"""
import struct
import sys

import torch
import torch.nn.functional as F
from torch import nn

MAGIC = b"TDREF1\n\0"
gen = torch.Generator().manual_seed(20261207)
tensors = []


def rand(*shape, scale=1.0, offset=0.0):
    """float32 values, handed to PyTorch as float64."""
    t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale + offset
    return t.to(torch.float64)


def put(name, t):
    tensors.append((name, t.detach().to(torch.float32).contiguous()))


def grads(y, inputs, dy):
    return torch.autograd.grad(y, inputs, dy)


def case_embedding():
    n, t, vocab, dim = 3, 5, 7, 4
    # every id, some several times (the scatter adds them), one id unused
    ids = torch.randint(0, vocab - 1, (n, t), generator=gen)
    w = rand(vocab, dim).requires_grad_(True)
    y = F.embedding(ids, w)
    dy = rand(*y.shape)
    (dw,) = grads(y, (w,), dy)
    p = "embedding/0/"
    put(p + "params", torch.tensor([float(vocab), float(dim)]))
    for name, x in (("ids", ids), ("w", w), ("dy", dy), ("y", y), ("dw", dw)):
        put(p + name, x)


def case_pos_embedding():
    x = rand(3, 5, 4).requires_grad_(True)
    w = rand(5, 4).requires_grad_(True)
    y = x + w
    dy = rand(*y.shape)
    dx, dw = grads(y, (x, w), dy)
    p = "pos_embedding/0/"
    for name, t in (("x", x), ("w", w), ("dy", dy), ("y", y), ("dx", dx), ("dw", dw)):
        put(p + name, t)


ATTENTION_CASES = [
    # n, T, D, heads, causal
    (2, 5, 8, 2, False),
    (2, 6, 6, 3, True),
    (1, 4, 4, 1, False),
    (3, 7, 8, 4, True),
]


def case_attention():
    for i, (n, t, d, heads, causal) in enumerate(ATTENTION_CASES):
        mha = nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            mha.in_proj_weight.copy_(rand(3 * d, d, scale=0.5))
            mha.in_proj_bias.copy_(rand(3 * d, scale=0.2))
            mha.out_proj.weight.copy_(rand(d, d, scale=0.5))
            mha.out_proj.bias.copy_(rand(d, scale=0.2))
        x = rand(n, t, d).requires_grad_(True)
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1) if causal else None
        y, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
        dy = rand(*y.shape)
        params = (x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight,
                  mha.out_proj.bias)
        dx, d_in_w, d_in_b, d_out_w, d_out_b = grads(y, params, dy)
        p = f"attention/{i}/"
        put(p + "params", torch.tensor([float(heads), float(causal)]))
        for name, v in (("x", x), ("in_w", mha.in_proj_weight), ("in_b", mha.in_proj_bias),
                        ("out_w", mha.out_proj.weight), ("out_b", mha.out_proj.bias),
                        ("dy", dy), ("y", y), ("dx", dx), ("d_in_w", d_in_w),
                        ("d_in_b", d_in_b), ("d_out_w", d_out_w), ("d_out_b", d_out_b)):
            put(p + name, v)


def case_dense_seq():
    x, w, b = rand(2, 5, 6), rand(3, 6), rand(3)
    for v in (x, w, b):
        v.requires_grad_(True)
    y = F.linear(x, w, b)
    dy = rand(*y.shape)
    dx, dw, db = grads(y, (x, w, b), dy)
    p = "dense_seq/0/"
    for name, v in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx),
                    ("dw", dw), ("db", db)):
        put(p + name, v)


def case_layernorm_seq():
    eps = 1e-5
    x = rand(3, 5, 6, scale=1.5, offset=0.3).requires_grad_(True)
    gamma = rand(6, scale=0.5, offset=1.0).requires_grad_(True)
    beta = rand(6).requires_grad_(True)
    y = F.layer_norm(x, (6,), gamma, beta, eps)
    dy = rand(*y.shape)
    dx, dgamma, dbeta = grads(y, (x, gamma, beta), dy)
    p = "layernorm_seq/0/"
    put(p + "params", torch.tensor([eps]))
    for name, v in (("x", x), ("gamma", gamma), ("beta", beta), ("dy", dy), ("y", y),
                    ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
        put(p + name, v)


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
    return len(out)


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    for case in (case_embedding, case_pos_embedding, case_attention, case_dense_seq,
                 case_layernorm_seq):
        case()
    path = sys.argv[1] if len(sys.argv) > 1 else "seq.bin"
    size = write(path)
    print(f"{path}: {len(tensors)} tensors, {size} bytes")
