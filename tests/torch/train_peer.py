#!/usr/bin/python3
"""PyTorch's peer of a traind job: trains the job file's model (built by
jobmodel.py) on the job's data, with its optimiser, schedule, loss, batch
size and epochs, on the CPU, and prints its test metric and speed, so that
examples/compare.sh can set traind's result beside it.

It reads the data as traind's loader does: IDX (gzip or not), raw records
(a label byte or int32 label, then the sample), CSV (label or target
columns), an image folder (Pillow; class folders in sorted order, files in
name order), with the job's normalisation and augmentation (random crop
after zero padding, horizontal flip, per-channel normalize: train samples
only for the first two).  The validation split (the train file's last
samples) is left out of training, as traind does.  Its own random order
and initial weights: the same model trained the same way, not the same
bits.

    tests/torch/train_peer.py JOB.yaml [--threads N] [--epochs N] [--limit N]

Prints one line: "torch: test_accuracy=A (or test_mae=M) samples_per_s=S
cpu_s=C wall_s=W threads=N", samples/s over the training steps alone.
Needs Debian's python3-torch and python3-yaml (and python3-pil for an
image folder) under /usr/bin/python3; exits 3 when they are missing.
"""
import argparse
import csv
import gzip
import os
import struct
import sys
import time


def _open(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path):
    import numpy as np
    with _open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">%dI" % ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_raw(path, raw, shape):
    import numpy as np
    dtypes = {"uint8": np.uint8, "int32": np.int32, "float16": np.float16,
              "float32": np.float32}
    sdt = np.dtype(dtypes[raw["dtype"]]).newbyteorder("<")
    ldt = np.dtype(dtypes[raw.get("label_dtype", "uint8")]).newbyteorder("<")
    n_in = 1
    for d in raw["record_shape"]:
        n_in *= int(d)
    loff = int(raw.get("label_offset", 0))
    lbytes = ldt.itemsize  # one class label (float targets: see below)
    soff = int(raw.get("sample_offset", loff + lbytes if loff == 0 else 0))
    rec = int(raw.get("record_bytes", max(loff + lbytes, soff + n_in * sdt.itemsize)))
    with _open(path) as f:
        data = f.read()[int(raw.get("header_bytes", 0)):]
    buf = np.frombuffer(data, dtype=np.uint8)[:len(data) // rec * rec].reshape(-1, rec)
    x = buf[:, soff:soff + n_in * sdt.itemsize].copy().view(sdt).reshape([-1] + shape)
    y = buf[:, loff:loff + lbytes].copy().view(ldt).reshape(-1)
    return x, y


def read_csv(path, c):
    import numpy as np
    with _open(path) as f:
        rows = list(csv.reader(line.decode() for line in f))
    if c.get("header", False):
        rows = rows[1:]
    rows = [r for r in rows if r]
    tcols = [int(v) for v in c.get("target_columns", [])]
    lcol = int(c.get("label_column", 0))
    ycols = tcols or [lcol]
    xcols = [i for i in range(len(rows[0])) if i not in ycols]
    a = np.array(rows, dtype=np.float64)
    y = a[:, tcols].astype(np.float32) if tcols else a[:, lcol].astype(np.int64)
    dt = np.uint8 if c.get("dtype", "float32") == "uint8" else np.float32
    return a[:, xcols].astype(dt), y


def read_images(folder, shape):
    import numpy as np
    from PIL import Image
    mode = "RGB" if shape[0] == 3 else "L"
    classes = sorted(d for d in os.listdir(folder)
                     if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    xs, ys = [], []
    for label, c in enumerate(classes):
        d = os.path.join(folder, c)
        for name in sorted(os.listdir(d)):
            if name.startswith(".") or not name.lower().endswith((".png", ".jpg", ".jpeg")):
                continue
            with Image.open(os.path.join(d, name)) as im:
                a = np.asarray(im.convert(mode), dtype=np.uint8)
            xs.append(a.reshape(shape) if mode == "L" else a.transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def load_split(job, split, x_shape):
    """(samples as stored, labels) of data.train or data.test."""
    data = job["data"]
    fmt = data.get("format", "idx")
    s = data[split]
    feats = s.get("features", s.get("images"))
    base = job["_dir"]
    path = feats if os.path.isabs(feats) else os.path.join(base, feats)
    if fmt == "idx" or fmt == "npy":
        import numpy as np
        lpath = s["labels"] if os.path.isabs(s["labels"]) else os.path.join(base, s["labels"])
        if fmt == "npy":
            x, y = np.load(path), np.load(lpath)
        else:
            x, y = read_idx(path), read_idx(lpath).astype(np.int64)
    elif fmt == "raw":
        x, y = read_raw(path, data["raw"], list(x_shape))
    elif fmt == "csv":
        x, y = read_csv(path, data.get("csv", {}))
    elif fmt == "images":
        x, y = read_images(path, list(x_shape))
    else:
        raise ValueError("data.format %r" % fmt)
    limit = int(s.get("limit", 0))
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=0, help="instead of train.epochs")
    ap.add_argument("--limit", type=int, default=0, help="the first N train samples only")
    a = ap.parse_args()
    try:
        import numpy as np
        import torch
        import yaml  # noqa: F401
    except ImportError:
        print("torch: not installed (apt-get install python3-torch python3-yaml, "
              "run with /usr/bin/python3)")
        return 3
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jobmodel

    torch.set_num_threads(a.threads)
    job = jobmodel.load_job(a.job)
    job["_dir"] = os.path.dirname(os.path.abspath(a.job))
    model, x_shape = jobmodel.build(job)
    tr, te = job["train"], job["data"]
    ids = jobmodel.takes_ids(job)
    loss_kind = tr.get("loss", {}).get("kind", "cross_entropy")

    x_train, y_train = load_split(job, "train", x_shape)
    x_test, y_test = load_split(job, "test", x_shape)
    if a.limit:
        x_train, y_train = x_train[:a.limit], y_train[:a.limit]
    val = te.get("validation", {}) or {}
    nval = int(val.get("count", 0)) or int(len(x_train) * float(val.get("fraction", 0.0)))
    if nval:
        x_train, y_train = x_train[:-nval], y_train[:-nval]

    # the device's normalisation: uint8 scaled by 1/255, then (x - mean) / std
    aug = te.get("augment", {}) or {}
    norm = aug.get("normalize") or te.get("normalize") or {}
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    chans = x_shape[0] if len(x_shape) == 3 else 1
    mean = torch.tensor(norm.get("mean", 0.0), dtype=torch.float32)
    std = torch.tensor(norm.get("std", 1.0), dtype=torch.float32)
    if mean.dim() == 1 and len(x_shape) == 3:
        mean, std = mean.view(chans, 1, 1), std.view(chans, 1, 1)
    crop = aug.get("random_crop")
    pad = int(crop.get("padding", 0)) if isinstance(crop, dict) else None
    flip = bool(aug.get("horizontal_flip", False))

    def inputs(xb, train):
        if ids:
            return torch.from_numpy(xb.astype(np.int64))
        x = torch.from_numpy(xb.astype(np.float32)).reshape([len(xb)] + list(x_shape))
        x = (x * scale - mean) / std
        if train and pad is not None and len(x_shape) == 3:
            n, _, h, w = x.shape
            # torchvision pads the samples as stored (zeros), before Normalize
            z = (torch.zeros(1) * scale - mean) / std
            xp = z.expand(n, chans, h + 2 * pad, w + 2 * pad).clone()
            xp[:, :, pad:pad + h, pad:pad + w] = x
            oy = torch.randint(0, 2 * pad + 1, (n,))
            ox = torch.randint(0, 2 * pad + 1, (n,))
            x = torch.stack([xp[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)])
        if train and flip and len(x_shape) == 3:
            m = torch.rand(len(x)) < 0.5
            x[m] = x[m].flip(3)
        return x

    def targets(yb):
        if loss_kind in ("mse", "mae"):
            return torch.from_numpy(np.asarray(yb, dtype=np.float32)).reshape(len(yb), -1)
        return torch.from_numpy(np.asarray(yb, dtype=np.int64))

    ls = float(tr.get("loss", {}).get("label_smoothing", 0.0))
    loss_fn = {"mse": torch.nn.MSELoss(), "mae": torch.nn.L1Loss()}.get(
        loss_kind, torch.nn.CrossEntropyLoss(label_smoothing=ls))
    opt = jobmodel.optimizer(job, model.parameters())
    sched = tr.get("schedule", {}) or {}
    lr0 = float(tr["optimizer"].get("lr", 0.001)) if isinstance(tr["optimizer"], dict) else 0.001

    def lr_at(step):  # traind's schedules, per optimiser step (README: Schedules)
        warm = int(sched.get("warmup_steps", 0))
        if step < warm:
            f0 = float(sched.get("warmup_start", 1.0 / 3.0))
            return lr0 * (f0 + (1.0 - f0) * step / warm)
        s = step - warm
        kind = sched.get("type", "constant")
        if kind == "step":
            return lr0 * float(sched.get("gamma", 0.1)) ** (s // int(sched["step_size"]))
        if kind == "cosine":
            import math
            tmax, lo = int(sched["t_max"]), float(sched.get("eta_min", 0.0))
            return lo + (lr0 - lo) * (1 + math.cos(math.pi * min(s, tmax) / tmax)) / 2
        return lr0

    batch = int(tr["batch_size"])
    epochs = a.epochs or int(tr["epochs"])
    n = len(x_train)
    step, seen, busy, cpu = 0, 0, 0.0, 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n).numpy()
        t0, c0 = time.perf_counter(), time.process_time()
        total = 0.0
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            x, y = inputs(x_train[idx], True), targets(y_train[idx])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            step += 1
        busy += time.perf_counter() - t0
        cpu += time.process_time() - c0
        seen += n
        metric = evaluate(model, x_test, y_test, inputs, targets, loss_kind, batch)
        print("torch: epoch %d/%d loss %.4f test %s" % (epoch + 1, epochs, total / n, metric),
              flush=True)
    print("torch: %s samples_per_s=%.1f cpu_s=%.1f wall_s=%.1f threads=%d torch=%s" %
          (metric, seen / busy, cpu, busy, torch.get_num_threads(), torch.__version__))
    return 0


def evaluate(model, x_test, y_test, inputs, targets, loss_kind, batch):
    import torch
    model.eval()
    right, err, count = 0, 0.0, 0
    with torch.no_grad():
        for b in range(0, len(x_test), 256):
            out = model(inputs(x_test[b:b + 256], False))
            y = targets(y_test[b:b + 256])
            if loss_kind in ("mse", "mae"):
                err += float((out - y).abs().sum())
                count += y.numel()
            else:
                right += int((out.argmax(1) == y).sum())
                count += len(y)
    if loss_kind in ("mse", "mae"):
        return "test_mae=%.4f" % (err / count)
    return "test_accuracy=%.4f" % (right / count)


if __name__ == "__main__":
    sys.exit(main())
