#!/usr/bin/python3
"""traind starts from weights PyTorch made (the job file's init:) and
computes what PyTorch computes with them.

    init_check.py PROBE SOURCE_ROOT

For every example job, and one with the norms: the job's nn.Sequential (jobmodel.py) with PyTorch's
own random init (times 3, so that the loss depends on every weight), its
BatchNorm statistics moved by a few forward passes in training mode, has its state_dict written as a safetensors file (the layout
of safetensors.torch.save_file, which Debian 12 does not package), once in
F32 and once in F16; td_model_probe loads each as the model's initial
weights (td_model_load, strict) and evaluates a fixed set without
training; PyTorch evaluates the same set with its module (for F16, its
weights rounded to F16 first).  The summed cross-entropy must agree within
1e-4 relative and the correct count exactly (jobs that compute in bf16 or
fp16 are left out: PyTorch computes here in fp32).  Exits 77 (skipped)
without PyTorch or PyYAML.
"""
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
    import yaml  # noqa: F401  (jobmodel needs it)
except ImportError as e:
    print("skipped: %s (apt-get install python3-torch python3-yaml)" % e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobmodel  # noqa: E402


def evaluate(model, job, x_shape, eval_path):
    with open(eval_path, "rb") as f:
        data = f.read()
    count, feats = struct.unpack_from("<II", data, 0)
    px = torch.frombuffer(bytearray(data[8:8 + count * feats]), dtype=torch.uint8)
    # class ids as int32 (model_probe writes the targets the model reads)
    lb = torch.frombuffer(bytearray(data[8 + count * feats:8 + count * feats + 4 * count]),
                          dtype=torch.int32).long()
    norm = job.get("data", {}).get("normalize", {}) or {}
    mean, std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
    if jobmodel.takes_ids(job):  # token ids reach the embedding as stored
        x = px.long().reshape([count] + list(x_shape))
    else:
        x = ((px.float() / 255.0 - mean) / std).reshape([count] + list(x_shape))
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, lb, reduction="sum").item()
        correct = int((logits.argmax(1) == lb).sum())
    return loss, correct


def check(probe, job_path, tmp, half):
    job = jobmodel.load_job(job_path)
    precision = (job.get("memory") or {}).get("precision", "fp32")
    if precision != "fp32":  # it computes in 16 bits, PyTorch here in 32
        print("%s: %s, not compared" % (os.path.basename(job_path), precision))
        return 0
    loss_cfg = (job.get("train", {}) or {}).get("loss", {}) or {}
    if loss_cfg.get("kind", "cross_entropy") != "cross_entropy" or \
            loss_cfg.get("targets", "classes") != "classes":
        # the other losses' evaluation is torch_load's (load_check.py)
        print("%s: float targets, not compared" % os.path.basename(job_path))
        return 0
    torch.manual_seed(3)
    model, x_shape = jobmodel.build(job)
    model.train()
    with torch.no_grad():
        # larger weights than the init's, so that the loss tells them apart
        for p in model.parameters():
            p.mul_(3.0)
        # BatchNorm's running statistics and count move
        for _ in range(3):
            if jobmodel.takes_ids(job):
                vocab = int(job["model"]["layers"][0]["vocab"])
                model(torch.randint(0, vocab, [4] + list(x_shape)))
            else:
                model(torch.rand([4] + list(x_shape)))
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    init = os.path.join(tmp, "init.safetensors")
    jobmodel.write_safetensors(init, state)
    out = subprocess.run([probe, job_path, tmp, "0", init], capture_output=True, text=True)
    if out.returncode != 0:
        print("%s: td_model_probe failed: %s" % (job_path, out.stderr.strip()))
        return 1
    fields = dict(kv.split("=") for kv in out.stdout.split())
    want_loss, want_correct = float(fields["loss_sum"]), int(fields["correct"])
    loss, correct = evaluate(model, job, x_shape, os.path.join(tmp, "eval.bin"))
    rel = abs(loss - want_loss) / max(abs(want_loss), 1e-12)
    print("%s (%s): traind loss_sum %.6f correct %d; PyTorch %.6f correct %d; rel diff %.2e"
          % (os.path.basename(job_path), "F16" if half else "F32", want_loss, want_correct,
             loss, correct, rel))
    if rel > 1e-4 or correct != want_correct:
        print("MISMATCH")
        return 1
    return 0


# The norms, which no example has: BatchNorm's statistics and its count
# (an I64 scalar), LayerNorm over [C, H, W].  The probe makes its own data.
NORMS_JOB = """name: norms
model:
  input: [1, 8, 8]
  layers:
    - {type: conv2d, filters: 4, kernel: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: layernorm}
    - {type: flatten}
    - {type: dense, units: 10}
data:
  train: {images: unused-i, labels: unused-l}
  test: {images: unused-i, labels: unused-l}
train:
  batch_size: 16
  epochs: 1
  optimizer: sgd
"""


def main():
    probe, src = sys.argv[1], sys.argv[2]
    examples = os.path.join(src, "examples")
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [os.path.join(examples, n) for n in sorted(os.listdir(examples))
                if n.endswith(".yaml")]
        jobs.append(os.path.join(tmp, "norms.yaml"))
        with open(jobs[-1], "w") as f:
            f.write(NORMS_JOB)
        for job in jobs:
            for half in (False, True):
                status |= check(probe, job, tmp, half)
    return status


if __name__ == "__main__":
    sys.exit(main())
