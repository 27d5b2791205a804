#!/usr/bin/env python3
"""Writes the seed corpora of the file-reader fuzz targets: small valid
inputs for fuzz_idx, fuzz_npy, fuzz_csv, fuzz_raw (the layout datafuzz.h
reads), fuzz_safetensors, fuzz_checkpoint, fuzz_kvline and fuzz_shmcache.
Standard library only; a few hundred bytes each.

    tests/fuzz/gen_file_corpus.py [tests/fuzz/corpus]
"""
import gzip
import json
import os
import struct
import sys
import zlib

SEP = b"@@LABELS@@"
# Mode bits (datafuzz.h): 0-1 samples' storage, 2-3 labels', 4 streaming.
PLAIN, GZ, GZ2 = 0, 1, 2
STREAM = 0x10

out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(out_root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def head(mode, elems, classes, limit=0):
    return bytes([mode]) + struct.pack("<H", elems) + bytes([classes - 1, limit])


# IDX ---------------------------------------------------------------------
def idx(dims, body):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + body


imgs = idx([3, 2, 2], bytes(range(12)))
labs = idx([3], bytes([0, 1, 2]))
write("idx", "plain", head(PLAIN, 4, 10) + imgs + SEP + labs)
write("idx", "gzip", head(GZ | GZ << 2, 4, 10) + imgs + SEP + labs)
write("idx", "gzip-members-stream", head(GZ2 | STREAM, 4, 10) + imgs + SEP + labs)
write("idx", "limit", head(PLAIN | STREAM, 4, 3, limit=2) + imgs + SEP + labs)
# Fashion-MNIST's header (2051, 28 x 28) with 2 images of made-up pixels.
fm = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
hdr = gzip.open(fm).read(16) if os.path.exists(fm) else idx([10000, 28, 28], b"")
hdr = hdr[:4] + struct.pack(">I", 2) + hdr[8:16]
pixels = bytes((i * 7) % 256 for i in range(2 * 784))
write("idx", "fashion-mnist-header",
      head(GZ | GZ << 2, 784, 10) + hdr + pixels + SEP + idx([2], bytes([9, 0])))


# npy ---------------------------------------------------------------------
def npy(descr, shape, body, version=1):
    shape_s = "(%s)" % (", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else ""))
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_s)
    pre = 10 if version == 1 else 12
    pad = (64 - (pre + len(text) + 1) % 64) % 64
    text = (text + " " * pad + "\n").encode()
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + body


x_u8 = npy("|u1", (3, 2, 2), bytes(range(12)))
y_i8 = npy("<i8", (3,), struct.pack("<3q", 0, 1, 2))
write("npy", "u8-i64", head(PLAIN, 4, 10) + x_u8 + SEP + y_i8)
x_f4 = npy("<f4", (2, 3), struct.pack("<6f", 0.5, -1, 2, 3.25, 0, 1e3))
y_i4 = npy("<i4", (2,), struct.pack("<2i", 1, 0))
write("npy", "f32-i32-gzip-stream", head(GZ | GZ << 2 | STREAM, 3, 2) + x_f4 + SEP + y_i4)
x_f2 = npy("<f2", (2, 2), struct.pack("<4e", 0.5, -1, 2, 3), version=2)
y_u1 = npy("|u1", (2,), bytes([1, 1]), version=3)
write("npy", "f16-v2-u8-v3", head(GZ2, 2, 2) + x_f2 + SEP + y_u1)
# numpy's defaults, converted as read: float64 (one value rounds, one is
# float32's largest) and int64 samples.
x_f8 = npy("<f8", (2, 3), struct.pack("<6d", 0.1, -1, 2, 3.4028234663852886e38, 0, 1e3))
write("npy", "f64-i64-gzip-stream", head(GZ | STREAM, 3, 2) + x_f8 + SEP +
      npy("<i8", (2,), struct.pack("<2q", 1, 0)))
x_i8 = npy("<i8", (2, 2), struct.pack("<4q", -2147483648, 2147483647, 0, 5))
write("npy", "i64-u8", head(PLAIN, 2, 2) + x_i8 + SEP + y_u1)

# CSV: mode bit 5 a header line, bit 6 uint8; label column (2 bytes) ------
CSV_HEADER, CSV_U8 = 0x20, 0x40
rows = b"sepal,petal,width,class\n5.1,3.5,1.4,0\n4.9, 3.0 ,1.4e0,1\r\n-2.5,1e3,0,2\n"
write("csv", "header-f32", head(CSV_HEADER, 3, 3) + struct.pack("<H", 3) + rows)
write("csv", "header-f32-gzip-stream",
      head(CSV_HEADER | GZ | STREAM, 3, 3) + struct.pack("<H", 3) + rows)
u8rows = b"0,1,2,255\n1,4,5,6\n2,0,0,0"
write("csv", "u8-label-first", head(CSV_U8, 3, 3) + struct.pack("<H", 0) + u8rows)
write("csv", "u8-label-first-gzip2", head(CSV_U8 | GZ2, 3, 3) + struct.pack("<H", 0) + u8rows)
# Enough lines for several deflate blocks, so the scan makes access points.
many = b"".join(b"%d,%d,%d,%d\n" % (i % 3, i % 200, (i + 1) % 200, (i + 2) % 200)
                for i in range(300))
write("csv", "u8-300-lines-gzip2-stream",
      head(CSV_U8 | GZ2 | STREAM, 3, 3) + struct.pack("<H", 0) + many)


# raw: mode bits 5-6 dtype, bit 7 int32 labels; label offset, sample offset
# (0xffff: default), record size (0: default), header size ----------------
def rawcfg(label_off, sample_off=0xffff, rec=0, header=0):
    return struct.pack("<HHHB", label_off, sample_off, rec, header)


recs = b"".join(bytes([i % 10]) + bytes([i, i + 1, i + 2, i + 3]) for i in range(4))
write("raw", "u8-label-first", head(PLAIN, 4, 10) + rawcfg(0) + recs)
write("raw", "u8-label-first-gzip-stream", head(GZ | STREAM, 4, 10) + rawcfg(0) + recs)
F32, I32LABEL = 3 << 5, 0x80
frecs = b"".join(b"\xee\xee" + struct.pack("<2f", i, -i) + struct.pack("<i", i % 3)
                 for i in range(3))
write("raw", "f32-i32-label-after-header",
      head(F32 | I32LABEL, 2, 3) + rawcfg(10, 2, 14, 4) + b"HDR!" + frecs)
write("raw", "f32-i32-label-after-header-gzip2",
      head(F32 | I32LABEL | GZ2, 2, 3) + rawcfg(10, 2, 14, 4) + b"HDR!" + frecs)
F16 = 2 << 5
write("raw", "f16", head(F16, 2, 2) + rawcfg(4, 0) + b"".join(
    struct.pack("<2e", 0.5, i) + bytes([i % 2]) for i in range(3)))


# safetensors and checkpoints ---------------------------------------------
def safetensors(tensors, meta=None):
    """tensors: [(name, dtype, shape, data)] in header order."""
    hdr, off = {}, 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dtype, shape, data in tensors:
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


w = struct.pack("<4f", 1, 2, 3, 4)
write("safetensors", "two-tensors", safetensors(
    [("fc.weight", "F32", (2, 2), w), ("fc.bias", "BF16", (2,), b"\x80\x3f\x00\x40")],
    {"format": "pt"}))
write("safetensors", "scalar-empty-and-u8", safetensors(
    [("s", "F64", (), struct.pack("<d", 0.5)), ("e", "I32", (0, 3), b""),
     ("u\\u00e9", "U8", (3,), b"abc")]))

# the init: model fuzz_safetensors checks against ([4] -> dense 3 ->
# layernorm -> dense 2), in PyTorch's save_file order and a mix of dtypes
write("safetensors", "init-model", safetensors(
    [("0.weight", "F32", (3, 4), struct.pack("<12f", *range(12))),
     ("0.bias", "F16", (3,), struct.pack("<3e", 0.5, -1, 2)),
     ("1.weight", "BF16", (3,), b"\x80\x3f" * 3), ("1.bias", "F64", (3,), struct.pack("<3d", 0, 0, 0)),
     ("2.weight", "F32", (2, 3), struct.pack("<6f", *range(6))),
     ("2.bias", "F32", (2,), struct.pack("<2f", 1, 2))], {"format": "pt"}))

CKPT_FIELDS = ["job", "step", "epoch", "batch", "seed", "rng", "loss_scale", "good_steps",
               "skipped"]


def checkpoint(tensors, state):
    meta = {"format": "traind-checkpoint", "version": "1"}
    meta.update(state)
    crc = 0
    for k in ["format", "version"] + CKPT_FIELDS:
        crc = zlib.crc32(k.encode() + b"\0" + meta[k].encode() + b"\0", crc)
    for name, dtype, shape, data in tensors:
        crc = zlib.crc32(name.encode() + b"\0" + dtype.encode() + b"\0", crc)
        crc = zlib.crc32(struct.pack("<Q", len(shape)), crc)
        for d in shape:
            crc = zlib.crc32(struct.pack("<Q", d), crc)
        crc = zlib.crc32(data, crc)
    meta["crc32"] = "%08x" % crc
    return safetensors(tensors, meta)


state = {"job": "mnist-mlp", "step": "120", "epoch": "1", "batch": "20", "seed": "42",
         "rng": "0", "loss_scale": "1", "good_steps": "0", "skipped": "0"}
write("checkpoint", "worker-state", checkpoint(
    [("state", "F32", (64,), struct.pack("<64f", *[i / 8 for i in range(64)]))], state))
state2 = dict(state, loss_scale="65536", good_steps="17", skipped="3", rng="99")
write("checkpoint", "two-tensors-loss-scale", checkpoint(
    [("w", "BF16", (2, 2), bytes(8)), ("m", "F32", (3,), struct.pack("<3f", 1, 2, 3))], state2))

# Event lines as the worker writes them -----------------------------------
write("kvline", "worker-events", b"\n".join([
    b"heartbeat",
    b"plan micro_batch=64 params=1000 grads=1000 optim=2000 activations=4096 workspace=0 "
    b"staging=512 overhead=64 total=8768",
    b"progress epoch=1 epochs=3 step=10 steps=300 loss=0.693147 samples_per_sec=1234.5 "
    b"mem=8768 data_wait=0.01",
    b"replan micro_batch=32 accumulation=2 total=4096 precision=bf16 recompute=1",
    b"oom requested=1048576 free=4096 phase=forward micro_batch=64",
    b"eval epoch=1 accuracy=0.812500 loss=0.512000",
    b"val epoch=1 accuracy=0.800000 loss=0.520000",
    b"checkpoint step=100 epoch=0 batch=100 bytes=4096",
    b"resumed step=100 epoch=0 batch=100 bytes=4096",
    b"resume_failed msg=checkpoint is damaged: checksum 00000000, the contents give 1234abcd",
    b"error code=EOOM msg=out of device memory at step=3",
    b"done accuracy=0.850000 loss=0.410000 samples_per_sec=2000.0 model=/var/lib/traind/m",
]) + b"\n")
write("kvline", "nan-and-huge", b"progress epoch=nan step=1e300 loss=nan mem=-1\n"
      b"progress loss=inf steps=18446744073709551616 msg=\n")

# Shared cache segments: expected size, key, padding, then the segment ----
MAGIC, VERSION, DATA_OFF = 0x48435254, 1, 4096


def shm(key, data_bytes, seg_data_bytes=None, magic=MAGIC, version=VERSION):
    seg_data_bytes = data_bytes if seg_data_bytes is None else seg_data_bytes
    k = key.encode()
    seg = struct.pack("<IIQ", magic, version, seg_data_bytes) + k.ljust(1024, b"\0")
    pad = DATA_OFF + data_bytes - len(seg)
    return struct.pack("<QH", data_bytes, len(k)) + k + struct.pack("<H", pad) + seg


key = "v1 fmt=0 elems=784 dtype=0 limit=0  file=803:1a2b:123:1700000000.000000000"
write("shmcache", "published", shm(key, 16))
write("shmcache", "unpublished", shm(key, 16, magic=0))
write("shmcache", "other-size", shm(key, 16, seg_data_bytes=32))
