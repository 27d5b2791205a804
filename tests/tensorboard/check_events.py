"""Reads a traind job's TensorBoard event files with TensorBoard's own
reader and compares the scalars with what traind published for the job.

    check_events.py EXPECTED.json

EXPECTED.json (written by tests/integration/test_tensorboard.c):
  logdir    STATE/jobs, as `tensorboard --logdir` is given it
  run       the job's id: its directory, which TensorBoard shows as a run
  every     the job's tensorboard.every_steps
  steps     train batches per epoch
  progress  [[global step, loss, train accuracy], ...] from job.progress
  eval      [[global step at the epoch's end, test accuracy, test loss,
              validation accuracy, validation loss], ...] from job.eval

Exits 0 when they agree, 1 with the differences on stderr.  Prints a sample
of what the reader read, beside the events, on stdout.
"""
import json
import math
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer

TAGS = [
    "train/loss", "train/accuracy", "train/samples_per_sec", "train/data_wait",
    "train/learning_rate", "memory/used_bytes", "memory/planned_bytes",
    "test/accuracy", "test/loss", "val/accuracy", "val/loss",
    "replan/micro_batch", "replan/accumulation", "replan/planned_bytes",
    "oom/requested_bytes", "oom/free_bytes",
]
# traind's events carry 6 decimals; TensorBoard keeps a float32
TOL = 1e-5


def main():
    with open(sys.argv[1]) as f:
        want = json.load(f)
    errors = []

    # `tensorboard --logdir STATE/jobs`: every job directory is a run
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(want["logdir"])
    mux.Reload()
    if want["run"] not in mux.Runs():
        errors.append("run %s not among %s" % (want["run"], sorted(mux.Runs())))

    acc = event_accumulator.EventAccumulator(
        want["logdir"] + "/" + want["run"], size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for t in TAGS:
        if t not in tags:
            errors.append("no scalar %s (the reader found %s)" % (t, sorted(tags)))
    if errors:
        return report(errors)
    got = {t: {e.step: e.value for e in acc.Scalars(t)} for t in TAGS}
    every, steps = want["every"], want["steps"]

    progress = {p[0]: p for p in want["progress"]}
    for step, value in sorted(got["train/loss"].items()):
        if step % every != 0 and step % steps != 0:
            errors.append("train/loss at step %d: neither a multiple of %d nor an epoch's end"
                          % (step, every))
        if step in progress:
            _, loss, train_acc = progress[step]
            close(errors, "train/loss", step, value, loss)
            close(errors, "train/accuracy", step, got["train/accuracy"][step], train_acc)
    for step in progress:
        if step % steps == 0 and step not in got["train/loss"]:
            errors.append("no train/loss at the epoch's end, step %d" % step)

    for step, test_acc, test_loss, val_acc, val_loss in want["eval"]:
        for tag, value in (("test/accuracy", test_acc), ("test/loss", test_loss),
                           ("val/accuracy", val_acc), ("val/loss", val_loss)):
            if step not in got[tag]:
                errors.append("no %s at step %d (has %s)" % (tag, step, sorted(got[tag])))
            else:
                close(errors, tag, step, got[tag][step], value)

    for step, value in got["train/learning_rate"].items():
        if not 0 < value <= 0.01 + TOL:
            errors.append("train/learning_rate %g at step %d is outside (0, lr]" % (value, step))
    for step, value in got["memory/used_bytes"].items():
        if not value > 0 or value > got["memory/planned_bytes"][step] * 1.0001:
            errors.append("memory/used_bytes %g at step %d: not within the plan %g"
                          % (value, step, got["memory/planned_bytes"][step]))

    print("TensorBoard %s read run %s: %d scalar tags, %d train/loss points"
          % (tensorboard_version(), want["run"], len(tags), len(got["train/loss"])))
    print("  %-6s %-22s %s" % ("step", "train/loss (reader)", "job.progress loss"))
    shown = [s for s in sorted(progress) if s in got["train/loss"]]
    for step in shown if len(shown) <= 6 else shown[:3] + shown[-3:]:
        print("  %-6d %-22.7g %.6f" % (step, got["train/loss"][step], progress[step][1]))
    for step, test_acc, _, val_acc, _ in want["eval"]:
        print("  step %d: test/accuracy %.6f (job.eval %.6f), val/accuracy %.6f (%.6f)"
              % (step, got["test/accuracy"][step], test_acc, got["val/accuracy"][step], val_acc))
    for step, value in sorted(got["replan/micro_batch"].items()):
        print("  step %d: replan/micro_batch %g, replan/accumulation %g"
              % (step, value, got["replan/accumulation"][step]))
    return report(errors)


def close(errors, tag, step, value, expected):
    if not math.isclose(value, expected, rel_tol=TOL, abs_tol=TOL):
        errors.append("%s at step %d: the reader has %.9g, traind published %.9g"
                      % (tag, step, value, expected))


def tensorboard_version():
    import tensorboard
    return tensorboard.__version__


def report(errors):
    for e in errors[:40]:
        print("check_events: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
