#!/usr/bin/python3
"""PyTorch loads a model traind saved and computes what traind computed.

    load_check.py JOB.yaml OUTDIR LOSS_SUM CORRECT

OUTDIR holds model.safetensors and eval.bin from td_model_probe; LOSS_SUM
and CORRECT are traind's evaluation of that set.  The job's model is built
as nn.Sequential (jobmodel.py), the file is loaded with strict=True (every
name and shape must match, nothing missing or extra), and the summed
loss (the job's: cross-entropy, binary cross-entropy with logits, MSE or
L1) in evaluation mode must agree within 1e-4 relative and the correct
count exactly.  Exits 77 (skipped) without PyTorch or PyYAML.
"""
import os
import struct
import sys

try:
    import torch
    import yaml  # noqa: F401  (jobmodel needs it)
except ImportError as e:
    print("skipped: %s (apt-get install python3-torch python3-yaml)" % e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobmodel  # noqa: E402


def main():
    job_path, outdir, want_loss, want_correct = sys.argv[1], sys.argv[2], \
        float(sys.argv[3]), int(sys.argv[4])
    job = jobmodel.load_job(job_path)
    model, x_shape = jobmodel.build(job)
    state = jobmodel.read_safetensors(os.path.join(outdir, "model.safetensors"))
    model.load_state_dict(state, strict=True)
    model.eval()

    with open(os.path.join(outdir, "eval.bin"), "rb") as f:
        data = f.read()
    count, feats = struct.unpack_from("<II", data, 0)
    px = torch.frombuffer(bytearray(data[8:8 + count * feats]), dtype=torch.uint8)
    loss_cfg = (job.get("train", {}) or {}).get("loss", {}) or {}
    kind = loss_cfg.get("kind", "cross_entropy")
    soft = loss_cfg.get("targets", "classes") == "soft"
    width = int(job["model"]["layers"][-1]["units"])
    tail = bytearray(data[8 + count * feats:])
    if kind == "cross_entropy" and not soft:
        lb = torch.frombuffer(tail[:4 * count], dtype=torch.int32).long()
    else:
        lb = torch.frombuffer(tail[:4 * count * width], dtype=torch.float32).reshape(count,
                                                                                      width)
    norm = job.get("data", {}).get("normalize", {}) or {}
    mean, std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
    if jobmodel.takes_ids(job):
        x = px.long().reshape([count] + list(x_shape))
    else:
        x = ((px.float() / 255.0 - mean) / std).reshape([count] + list(x_shape))
    with torch.no_grad():
        logits = model(x)
        # traind's per-sample loss: cross-entropy summed over the classes,
        # the others averaged over the outputs; summed over the samples
        F = torch.nn.functional
        if kind == "cross_entropy":
            loss = F.cross_entropy(logits, lb, reduction="sum").item()
            want = lb.argmax(1) if soft else lb
            correct = int((logits.argmax(1) == want).sum())
        elif kind == "binary_cross_entropy":
            loss = F.binary_cross_entropy_with_logits(logits, lb, reduction="sum").item() / width
            correct = int(((logits > 0) == (lb >= 0.5)).all(1).sum())
        else:
            fn = F.mse_loss if kind == "mse" else F.l1_loss
            loss = fn(logits, lb, reduction="sum").item() / width
            correct = 0
    rel = abs(loss - want_loss) / max(abs(want_loss), 1e-12)
    print("%s: traind loss_sum %.6f correct %d; PyTorch %.6f correct %d; rel diff %.2e"
          % (os.path.basename(job_path), want_loss, want_correct, loss, correct, rel))
    if rel > 1e-4 or correct != want_correct:
        print("MISMATCH")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
