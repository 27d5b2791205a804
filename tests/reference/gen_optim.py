#!/usr/bin/python3
"""Write optim.bin: PyTorch's optimiser updates, gradient clipping and
learning-rate schedules, and numpy's / PyTorch's fp16 and bf16 roundings,
for tests/unit/test_optim.c, test_schedule.c and test_half.c.

Run with Debian's python3-torch under /usr/bin/python3 (see README.md).
The format is layers.bin's (gen_reference.py): the 8 bytes b"TDREF1\\n\\0",
a u32 tensor count, then per tensor a u16 name length, the name (ASCII), a
u8 rank, u32 dims[rank] and float32 data, all little-endian.

Optimisers run in float32, as ours do, on float32 hyperparameters (each
value is rounded to float32 first, so both sides use the same constants).
Schedules are PyTorch's own scheduler objects stepped once per update.
"""
import math
import struct
import sys
import warnings

import numpy as np
import torch

MAGIC = b"TDREF1\n\0"
gen = torch.Generator().manual_seed(20240612)
tensors = []


def f32(x):
    return float(np.float32(x))


def put(name, t):
    t = torch.as_tensor(t)
    tensors.append((name, t.detach().to(torch.float32).contiguous()))


def rand(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * scale


# name, optimiser class, keyword arguments.  "params" in the file is
# [lr, momentum, dampening, weight_decay, nesterov, beta1, beta2, eps].
OPT_CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.1)),
    ("sgd_wd", torch.optim.SGD, dict(lr=0.05, weight_decay=0.01)),
    ("momentum", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("momentum_damp", torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3,
                                            weight_decay=0.001)),
    ("nesterov", torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True,
                                       weight_decay=0.01)),
    ("adam", torch.optim.Adam, dict(lr=0.001)),
    ("adam_wd", torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                       weight_decay=0.1)),
    ("adamw", torch.optim.AdamW, dict(lr=0.001)),
    ("adamw_wd", torch.optim.AdamW, dict(lr=0.02, betas=(0.85, 0.995), eps=1e-7,
                                         weight_decay=0.05)),
]
OPT_N, OPT_STEPS = 37, 8


def case_optimisers():
    for name, cls, kw in OPT_CASES:
        if cls is not torch.optim.SGD:  # PyTorch's defaults, spelled out to round them
            kw = dict(dict(betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.01 if cls is torch.optim.AdamW else 0.0), **kw)
        kw = {k: (tuple(f32(b) for b in v) if isinstance(v, tuple) else
                  v if isinstance(v, bool) else f32(v)) for k, v in kw.items()}
        p0 = rand(OPT_N)
        grads = rand(OPT_STEPS, OPT_N, scale=0.5)
        p = p0.clone().requires_grad_(True)
        opt = cls([p], foreach=False, **kw)
        traj = []
        for t in range(OPT_STEPS):
            p.grad = grads[t].clone()
            opt.step()
            traj.append(p.detach().clone())
        betas = kw.get("betas", (0.9, 0.999))
        params = [kw["lr"], kw.get("momentum", 0.0), kw.get("dampening", 0.0),
                  kw.get("weight_decay", 0.0),
                  1.0 if kw.get("nesterov", False) else 0.0, betas[0], betas[1],
                  kw.get("eps", 1e-8)]
        pre = "optim/%s/" % name
        put(pre + "params", torch.tensor([f32(v) for v in params]))
        put(pre + "p0", p0)
        put(pre + "grads", grads)
        put(pre + "traj", torch.stack(traj))
        st = opt.state[p]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if st.get(key) is not None:
                put(pre + key, st[key])


# sizes of the tensors, max_norm
CLIP_CASES = [
    ([5, 17, 3], 1.0),    # clips
    ([4, 9], 1000.0),     # does not
    ([300, 7, 1], 0.25),  # clips, longer tensors
]


def case_clip():
    for i, (sizes, max_norm) in enumerate(CLIP_CASES):
        max_norm = f32(max_norm)
        ps = [torch.zeros(n, requires_grad=True) for n in sizes]
        gs = [rand(n) for n in sizes]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        pre = "clip/%d/" % i
        put(pre + "params", torch.tensor([max_norm, float(total)]))
        for j, (p, g) in enumerate(zip(ps, gs)):
            put(pre + "g%d" % j, g)
            put(pre + "out%d" % j, p.grad)


# name, main scheduler, warm-up (steps, start factor) or None.  "params" is
# [kind (0 constant, 1 step, 2 cosine), lr, step_size, gamma, t_max,
# eta_min, warmup_steps, warmup_start]; every value is a float32 exactly.
SCHED_STEPS = 300
SCHED_CASES = [
    ("constant", (0, {}), None),
    ("step", (1, dict(step_size=30, gamma=0.5)), None),
    ("step_gamma", (1, dict(step_size=7, gamma=0.875)), None),
    ("cosine", (2, dict(T_max=100, eta_min=0.0)), None),
    ("cosine_floor", (2, dict(T_max=120, eta_min=2.0 ** -13)), None),
    ("warmup_constant", (0, {}), (10, 0.125)),
    ("warmup_step", (1, dict(step_size=25, gamma=0.125)), (10, 0.25)),
    ("warmup_cosine", (2, dict(T_max=200, eta_min=2.0 ** -17)), (20, 0.0078125)),
]


def case_schedules():
    lr = 0.125
    for name, (kind, kw), warm in SCHED_CASES:
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=lr)
        if kind == 0:
            main = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        elif kind == 1:
            main = torch.optim.lr_scheduler.StepLR(opt, **kw)
        else:
            main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, **kw)
        sched = main
        if warm is not None:
            linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=warm[1], end_factor=1.0,
                                                       total_iters=warm[0])
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [linear, main],
                                                          milestones=[warm[0]])
        lrs = []
        for _ in range(SCHED_STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        params = [kind, lr, kw.get("step_size", 0), kw.get("gamma", 0.0), kw.get("T_max", 0),
                  kw.get("eta_min", 0.0), warm[0] if warm else 0, warm[1] if warm else 0.0]
        put("sched/%s/params" % name, torch.tensor(params, dtype=torch.float64))
        put("sched/%s/lr" % name, torch.tensor(lrs, dtype=torch.float64))


HALF_RANDOM = 3072


def case_half():
    """Floats of every magnitude, and exact ties, with numpy's fp16 and
    PyTorch's bf16 rounding of each (as bit patterns)."""
    rng = np.random.default_rng(7)
    mant = rng.uniform(1.0, 2.0, HALF_RANDOM)
    expo = rng.integers(-30, 20, HALF_RANDOM)
    sign = rng.choice([-1.0, 1.0], HALF_RANDOM)
    xs = list((sign * mant * np.exp2(expo)).astype(np.float32))
    # fp16 ties: halfway between neighbouring halves (normal and subnormal)
    hb = rng.integers(0, 0x7bff, 512).astype(np.uint16)
    lo = hb.view(np.float16).astype(np.float64)
    hi = (hb + 1).view(np.float16).astype(np.float64)
    xs += list(((lo + hi) / 2).astype(np.float32))
    # bf16 ties, and the largest values either side of the overflow points
    bb = rng.integers(0, 0x7f7f, 480).astype(np.uint32)
    xs += list(((bb << 16) | 0x8000).view(np.float32))
    xs += [np.float32(v) for v in (65504.0, 65519.99, 65520.0, -65520.0, 2.0 ** -24,
                                   2.0 ** -25, 2.0 ** -25 * 1.0000001, 3.0e38, -3.4e38,
                                   np.inf, -np.inf, 0.0, -0.0, 1e-45)]
    x = np.array(xs, dtype=np.float32)
    f16 = x.astype(np.float16).view(np.uint16)
    bf16 = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    put("half/x", torch.from_numpy(x))
    put("half/f16", torch.from_numpy(f16.astype(np.float32)))
    put("half/bf16", torch.from_numpy(bf16.astype(np.float32)))


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


def main():
    warnings.simplefilter("ignore")  # SequentialLR's step(0) deprecation notice
    torch.set_num_threads(1)
    case_optimisers()
    case_clip()
    case_schedules()
    case_half()
    write(sys.argv[1] if len(sys.argv) > 1 else "optim.bin")


if __name__ == "__main__":
    main()
