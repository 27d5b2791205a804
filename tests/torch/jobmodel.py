"""A traind job file's model as the equivalent torch.nn.Sequential (a plain
list of layers) or Graph (a model whose layers name their inputs), and a
reader for the safetensors files traind writes.

traind names a model's tensors "<layer>.weight", "<layer>.bias",
BatchNorm's "<layer>.running_mean", ..., where <layer> is the layer's name
or, without one, its index: nn.Sequential's names for a plain list, and a
Graph's submodules, named by the layers, for a graph.  So the module built
here loads a traind model with load_state_dict(strict=True).  Used by the
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


class SeqConv1d(nn.Conv1d):
    """nn.Conv1d on traind's sequences, which are channels last ([n, T, D]):
    the weight is nn.Conv1d's own [out, in, kernel]; only the input and the
    output are transposed around it."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class GlobalAvgPool(nn.Module):
    """traind's global_avg_pool: [n, C, H, W] -> [n, C] (AdaptiveAvgPool2d(1)
    then Flatten), a sequence [n, T, D] -> [n, D] (the mean over positions)."""

    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return x.mean(dim=1) if self.seq else x.mean(dim=(2, 3))


class PosEmbedding(nn.Module):
    """traind's pos_embedding: a learned [T, D] added to every sample."""

    def __init__(self, t, d):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(t, d))

    def forward(self, x):
        return x + self.weight


class SelfAttention(nn.MultiheadAttention):
    """traind's attention: nn.MultiheadAttention (batch_first, its own
    parameter names) with the input as query, key and value, and with
    causal set a mask that hides the positions after each query."""

    def __init__(self, d, heads, causal):
        super().__init__(d, heads, batch_first=True)
        self.causal = causal

    def forward(self, x):
        t = x.shape[1]
        mask = None
        if self.causal:
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]


def _pair(v, default):
    if v is None:
        v = default
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v), int(v))


def _pool_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


class Graph(nn.Module):
    """A model as traind's graph: each layer reads the outputs it names
    ("input" is the model's), in file order; the last one is the output.
    add sums its inputs in order, concat joins them along the features."""

    def __init__(self, nodes):
        super().__init__()
        self.nodes = [(name, kind, inputs, dim) for name, kind, inputs, dim, _ in nodes]
        for name, _, _, _, module in nodes:
            if module is not None:
                # as add_module does, without its refusal of names that are
                # nn.Module attributes ("eval", "training"): any layer name
                self._modules[name] = module

    def forward(self, x):
        out = {"input": x}
        for name, kind, inputs, dim in self.nodes:
            xs = [out[i] for i in inputs]
            if kind == "add":
                y = xs[0]
                for v in xs[1:]:
                    y = y + v
            elif kind == "concat":
                y = torch.cat(xs, dim)
            else:
                y = self._modules[name](xs[0])
            out[name] = y
        return y


def build(job):
    """(module, input shape without the batch) for a parsed job file."""
    dims = [int(d) for d in job["model"]["input"]]
    # [H, W] is one channel: [1, H, W]; [C, H, W] and [features] as written;
    # a sequence [T, D] (model.sequence) as written
    seq_in = bool(job["model"].get("sequence", False))
    x_shape = [1] + dims if len(dims) == 2 and not seq_in else dims
    specs = job["model"]["layers"]
    names = [str(s.get("name", i)) for i, s in enumerate(specs)]
    shapes = {"input": list(x_shape)}
    seqs = {"input": seq_in}
    nodes = []
    layers = []
    for i, spec in enumerate(specs):
        inputs = [str(v) for v in spec.get("inputs", [names[i - 1] if i > 0 else "input"])]
        shape = list(shapes[inputs[0]])
        seq = seqs[inputs[0]]
        made = len(layers)
        dim = 0
        t = spec["type"]
        # what the layer gets: a sequence [T, D] while seq stays true
        if t in ("flatten", "global_avg_pool"):
            was_seq, seq = seq, False
        else:
            was_seq = seq
        if t == "dense" and seq:
            layers.append(nn.Linear(shape[1], int(spec["units"])))
            shape = [shape[0], int(spec["units"])]
        elif t == "dense":
            feats = 1
            for d in shape:
                feats *= d
            layers.append(FlatLinear(feats, int(spec["units"])))
            shape = [int(spec["units"])]
        elif t == "embedding":
            layers.append(nn.Embedding(int(spec["vocab"]), int(spec["dim"])))
            shape = [shape[0], int(spec["dim"])]
            seq = True
        elif t == "pos_embedding":
            layers.append(PosEmbedding(shape[0], shape[1]))
        elif t == "attention":
            layers.append(SelfAttention(shape[1], int(spec["heads"]),
                                        bool(spec.get("causal", False))))
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
            seq = False
        elif t == "batchnorm2d":
            layers.append(nn.BatchNorm2d(shape[0], eps=float(spec.get("eps", 1e-5)),
                                         momentum=float(spec.get("momentum", 0.1))))
        elif t == "layernorm":
            layers.append(nn.LayerNorm(shape[1:] if seq else shape,
                                       eps=float(spec.get("eps", 1e-5))))
        elif t == "sigmoid":
            layers.append(nn.Sigmoid())
        elif t == "tanh":
            layers.append(nn.Tanh())
        elif t == "softmax":
            # the features: of each position of a sequence, the channels of a pixel
            layers.append(nn.Softmax(dim=2 if seq else 1))
        elif t == "global_avg_pool":
            layers.append(GlobalAvgPool(was_seq))
            shape = [shape[1] if was_seq else shape[0]]
        elif t == "conv1d":
            k = int(spec["kernel"])
            s = int(spec.get("stride", 1))
            p = int(spec.get("padding", 0))
            length, c = shape
            layers.append(SeqConv1d(c, int(spec["filters"]), k, s, p))
            shape = [_pool_out(length, k, s, p), int(spec["filters"])]
        elif t in ("add", "concat"):
            # the features: C of [C, H, W] and of flat ones, D of [T, D]
            dim = 2 if len(shape) == 2 else 1
            if t == "concat":
                shape[dim - 1] = sum(shapes[v][dim - 1] for v in inputs)
        else:
            raise ValueError("layer type %r has no PyTorch equivalent here" % t)
        if spec.get("trainable", True) is False:
            layers[-1].requires_grad_(False)  # trainable: false
        shapes[names[i]] = shape
        seqs[names[i]] = seq
        nodes.append((names[i], t, inputs, dim, layers[-1] if len(layers) > made else None))
    if any("inputs" in s or "name" in s for s in specs):
        return Graph(nodes), x_shape
    return nn.Sequential(*layers), x_shape


def takes_ids(job):
    """Whether the model reads token ids (an embedding first): its input is
    then the samples as they are, as integers, never scaled."""
    return job["model"]["layers"][0]["type"] == "embedding"


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
