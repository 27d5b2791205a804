#!/usr/bin/python3
"""PyTorch's training throughput for the model bench_train measures, as its
peer: the same layers, batch, optimiser and data type (uint8 pixels
normalised in the step, as traind does on the device), on the same cores.

Prints one line, "samples_per_s=N torch=VERSION threads=N", for bench_train
to read; exits 3 (and says so) when PyTorch is not installed.  Run it with
Debian's python3-torch: /usr/bin/python3 (apt-get install python3-torch).
"""
import argparse
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="784,512,256,10",
                    help="widths, input first: dense layers with ReLU between")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mean", type=float, default=0.2860)
    ap.add_argument("--std", type=float, default=0.3530)
    a = ap.parse_args()
    try:
        import torch
        from torch import nn
    except ImportError:
        print("torch: not installed (apt-get install python3-torch, run with /usr/bin/python3)")
        return 3

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    widths = [int(w) for w in a.layers.split(",")]
    layers = []
    for i in range(len(widths) - 1):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    nbatch = 16
    pixels = torch.randint(0, 256, (nbatch, a.batch, widths[0]), dtype=torch.uint8)
    labels = torch.randint(0, widths[-1], (nbatch, a.batch), dtype=torch.int64)

    def step(i):
        x = (pixels[i % nbatch].float() / 255.0 - a.mean) / a.std
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels[i % nbatch])
        loss.backward()
        opt.step()

    for i in range(a.warmup):
        step(i)
    best = 0.0
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(i)
        best = max(best, a.steps * a.batch / (time.perf_counter() - t0))
    print("samples_per_s=%.1f torch=%s threads=%d" % (best, torch.__version__,
                                                     torch.get_num_threads()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
