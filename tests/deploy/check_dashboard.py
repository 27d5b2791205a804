#!/usr/bin/env python3
"""The Grafana dashboard asks only for metrics traind exports.

Usage: check_dashboard.py DASHBOARD.json METRICS.c
       check_dashboard.py --self-test METRICS.c

Every PromQL expression in the dashboard (panels' targets' `expr`, the
template variables' queries) is searched for names that begin with
`traind_`; each must be a family of daemon/metrics.c's table (a
histogram's `_bucket`, `_sum` and `_count` series count as its family).
Exits 1 naming each unknown metric, and also when the dashboard asks for
no traind metric at all.  Where promtool is installed (Debian's
prometheus), every expression must also parse as PromQL: they go through
`promtool check rules` as recording rules, Grafana's variables replaced.
--self-test shows the check finds a wrong name and passes a right one.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# X(ID, "traind_name", "type", ...) in metrics.c's TD_METRICS_FAMILIES.
FAMILY = re.compile(r'X\(\s*\w+\s*,\s*"(traind_[a-z0-9_]+)"\s*,\s*"(gauge|counter|histogram)"')


def families(metrics_c):
    with open(metrics_c, encoding="utf-8") as f:
        found = dict(FAMILY.findall(f.read()))
    if not found:
        sys.exit(f"{metrics_c}: no metric families found (TD_METRICS_FAMILIES moved?)")
    return found


def exprs(node, keys=("expr", "query", "definition")):
    """Every PromQL string in the dashboard (panels' expr, variables' queries)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from exprs(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item, keys)


def series_names(expr):
    # Label values and legend text are strings: drop them first.
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {n for n in NAME.findall(expr) if n.startswith("traind_")}


def check(dashboard, known):
    with open(dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    allowed = set()
    for name, kind in known.items():
        allowed.add(name)
        if kind == "histogram":
            allowed.update(name + s for s in ("_bucket", "_sum", "_count"))
    used, unknown = set(), []
    for expr in exprs(dash):
        for name in sorted(series_names(expr)):
            used.add(name)
            if name not in allowed:
                unknown.append((name, expr))
    for name, expr in unknown:
        print(f"{dashboard}: '{name}' is not a metric traind exports (in: {expr})")
    if not used:
        print(f"{dashboard}: no expression asks for a traind_ metric")
        return 1
    if not unknown:
        print(f"{dashboard}: {len(used)} metrics, all exported by traind: {', '.join(sorted(used))}")
    return 1 if unknown or not parses(dashboard, dash) else 0


def parses(dashboard, dash):
    """Every panel expression is PromQL that promtool accepts (skipped without it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not installed (Debian's prometheus): the expressions' syntax is not checked")
        return True
    rules = []
    for i, expr in enumerate(exprs(dash, ("expr",))):
        expr = expr.replace("$__rate_interval", "5m").replace("$device", ".*")
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)  # JSON is YAML
    try:
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        print(f"{dashboard}: promtool does not accept an expression:\n{r.stdout}{r.stderr}")
        return False
    print(f"{dashboard}: promtool parses all {len(rules)} expressions")
    return True


def self_test(known):
    good = {"panels": [{"targets": [{"expr": 'rate(traind_queue_wait_seconds_bucket{x="traind_no"}[5m])'}]}]}
    bad = {"panels": [{"targets": [{"expr": "sum(traind_no_such_metric_total)"}]}]}
    empty = {"panels": [{"targets": [{"expr": "up"}]}]}
    dashes = [good, bad, empty]
    if shutil.which("promtool"):
        dashes.append({"panels": [{"targets": [{"expr": "sum(traind_jobs"}]}]})
    results = []
    for dash in dashes:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(dash, f)
        try:
            results.append(check(f.name, known))
        finally:
            os.unlink(f.name)
    want = [0, 1, 1, 1][:len(dashes)]
    if results != want:
        print(f"self-test: expected {want}, got {results}")
        return 1
    print("self-test: a right name passes; a wrong one, none at all and bad PromQL fail")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--self-test":
        return self_test(families(argv[2]))
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    return check(argv[1], families(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
