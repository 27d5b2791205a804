"""A traind job file's model as the equivalent torch.nn.Sequential, and a
reader for the safetensors files traind writes.

traind names a model's tensors as nn.Sequential does ("<layer index>.weight",
"<i>.bias", BatchNorm's "<i>.running_mean", ...), so the module built here
loads a traind model with load_state_dict(strict=True).  Used by the
training benchmark's PyTorch peer (tests/bench/bench_train.py) and by the
check that PyTorch loads and reproduces a traind model
(tests/torch/load_check.py).

Needs Debian's python3-torch and python3-yaml under /usr/bin/python3.
"""
import json
import struct

import torch
import yaml
from torch import nn


class FlatLinear(nn.Linear):
    """nn.Linear over a sample flattened first: traind's dense layer reads
    any input as [n, features], as if a Flatten came before it."""

    def forward(self, x):
        return super().forward(x.flatten(1))


def _pair(v, default):
    if v is None:
        v = default
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v), int(v))


def _pool_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def build(job):
    """(module, input shape without the batch) for a parsed job file."""
    dims = [int(d) for d in job["model"]["input"]]
    # [H, W] is one channel: [1, H, W]; [C, H, W] and [features] as written
    x_shape = [1] + dims if len(dims) == 2 else dims
    shape = list(x_shape)
    layers = []
    for spec in job["model"]["layers"]:
        t = spec["type"]
        if t == "dense":
            feats = 1
            for d in shape:
                feats *= d
            layers.append(FlatLinear(feats, int(spec["units"])))
            shape = [int(spec["units"])]
        elif t == "conv2d":
            k = _pair(spec.get("kernel"), 3)
            s = _pair(spec.get("stride"), 1)
            p = _pair(spec.get("padding"), 0)
            c, h, w = shape
            layers.append(nn.Conv2d(c, int(spec["filters"]), k, s, p))
            shape = [int(spec["filters"]), _pool_out(h, k[0], s[0], p[0]),
                     _pool_out(w, k[1], s[1], p[1])]
        elif t in ("maxpool2d", "avgpool2d"):
            k = _pair(spec.get("kernel"), 2)
            s = _pair(spec.get("stride"), k)
            p = _pair(spec.get("padding"), 0)
            cls = nn.MaxPool2d if t == "maxpool2d" else nn.AvgPool2d
            layers.append(cls(k, s, p))
            c, h, w = shape
            shape = [c, _pool_out(h, k[0], s[0], p[0]), _pool_out(w, k[1], s[1], p[1])]
        elif t == "relu":
            layers.append(nn.ReLU())
        elif t == "gelu":
            layers.append(nn.GELU(approximate=spec.get("approximate", "none")))
        elif t == "dropout":
            layers.append(nn.Dropout(float(spec.get("p", 0.5))))
        elif t == "flatten":
            layers.append(nn.Flatten())
            feats = 1
            for d in shape:
                feats *= d
            shape = [feats]
        elif t == "batchnorm2d":
            layers.append(nn.BatchNorm2d(shape[0], eps=float(spec.get("eps", 1e-5)),
                                         momentum=float(spec.get("momentum", 0.1))))
        elif t == "layernorm":
            layers.append(nn.LayerNorm(shape, eps=float(spec.get("eps", 1e-5))))
        else:
            raise ValueError("layer type %r has no PyTorch equivalent here" % t)
        if spec.get("trainable", True) is False:
            layers[-1].requires_grad_(False)  # trainable: false
    return nn.Sequential(*layers), x_shape


def load_job(path):
    with open(path) as f:
        return yaml.safe_load(f)


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    """{name: tensor} from a safetensors file (python3-safetensors is not
    in Debian 12, and the format is a length, a JSON header and bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        buf = bytearray(data[base + lo:base + hi])
        x = torch.frombuffer(buf, dtype=_DTYPES[t["dtype"]]) if buf else \
            torch.empty(0, dtype=_DTYPES[t["dtype"]])
        out[name] = x.reshape(t["shape"])
    return out


_NAMES = {v: k for k, v in _DTYPES.items()}


def write_safetensors(path, state):
    """{name: tensor} to a safetensors file as safetensors.torch.save_file
    lays one out: a JSON header (padded with spaces to 8 bytes) naming each
    tensor's dtype, shape and byte range, then the little-endian bytes."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def optimizer(job, params):
    """The job's optimiser as torch.optim builds it."""
    o = job["train"]["optimizer"]
    kind = o["type"]
    lr = float(o["lr"])
    wd = float(o.get("weight_decay", 0.0))
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(o.get("momentum", 0.0)),
                               dampening=float(o.get("dampening", 0.0)),
                               nesterov=bool(o.get("nesterov", False)), weight_decay=wd)
    betas = (float(o.get("beta1", 0.9)), float(o.get("beta2", 0.999)))
    eps = float(o.get("eps", 1e-8))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
