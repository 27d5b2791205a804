#!/usr/bin/python3
"""PyTorch's training throughput for the job bench_train measures, as its
peer: the same model (built from the job file by tests/torch/jobmodel.py,
the module that also loads traind's saved models), batch, optimiser and data
type (uint8 pixels normalised in the step, as traind does on the device), on
the same cores.

Prints one line, "samples_per_s=N torch=VERSION threads=N", for bench_train
to read; exits 3 (and says so) when PyTorch is not installed.  Run it with
Debian's python3-torch: /usr/bin/python3 (apt-get install python3-torch
python3-yaml).
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True, help="the job file whose model is measured")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    try:
        import torch
        import yaml  # noqa: F401
    except ImportError:
        print("torch: not installed (apt-get install python3-torch python3-yaml, "
              "run with /usr/bin/python3)")
        return 3
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
    import jobmodel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    job = jobmodel.load_job(a.job)
    model, x_shape = jobmodel.build(job)
    model.train()
    opt = jobmodel.optimizer(job, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = int(job["train"]["batch_size"])
    norm = job.get("data", {}).get("normalize", {}) or {}
    mean, std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
    classes = model(torch.zeros([1] + list(x_shape), dtype=torch.long if jobmodel.takes_ids(job)
                                else torch.float32)).shape[1]
    nbatch = 16
    pixels = torch.randint(0, 256, [nbatch, batch] + list(x_shape), dtype=torch.uint8)
    labels = torch.randint(0, classes, (nbatch, batch), dtype=torch.int64)

    def step(i):
        if jobmodel.takes_ids(job):  # token ids, as they are (vocab >= 256)
            x = pixels[i % nbatch].long()
        else:
            x = (pixels[i % nbatch].float() / 255.0 - mean) / std
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
        best = max(best, a.steps * batch / (time.perf_counter() - t0))
    print("samples_per_s=%.1f torch=%s threads=%d" % (best, torch.__version__,
                                                     torch.get_num_threads()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
