"""Every Grafana dashboard read into Grafana's own dashboard model (the
grafana-foundation-sdk, generated from Grafana's schema; offline) and
written back must keep every key and value. A key the model does not know
(a typo, a field from another Grafana version) is lost on the way and
reported, as is any value the model changes.

Usage: python dashboards_roundtrip.py DASHBOARD.json..."""

import json
import sys

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard


def lost(before, after, path=""):
    """Paths of `before` that `after` lacks or holds differently."""
    if isinstance(before, dict):
        if not isinstance(after, dict):
            yield f"{path}: became {type(after).__name__}"
            return
        for key, value in before.items():
            if key not in after:
                yield f"{path}.{key}: dropped"
            else:
                yield from lost(value, after[key], f"{path}.{key}")
    elif isinstance(before, list):
        if not isinstance(after, list) or len(before) != len(after):
            yield f"{path}: list changed length"
            return
        for i, (b, a) in enumerate(zip(before, after)):
            yield from lost(b, a, f"{path}[{i}]")
    elif before != after:
        yield f"{path}: {before!r} became {after!r}"


def main(paths):
    problems = []
    for path in paths:
        with open(path) as f:
            original = json.load(f)
        model = Dashboard.from_json(original)
        round_tripped = json.loads(json.dumps(model, cls=JSONEncoder))
        problems += [f"{path}{where}" for where in lost(original, round_tripped)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{len(paths)} dashboards round-trip through Grafana's model without losing a key")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
