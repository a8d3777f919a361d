"""The metric names and labels a PromQL expression uses, read with a real PromQL parser.

Run by the Python of .tools/promql-venv (``scripts/chart-check.sh --promql-python``), which has
promql-parser; not a test module. Reads a JSON list of expressions on stdin and prints, for each,
``{"names": [...], "matchers": {name: [label, ...]}, "grouping": [label, ...]}`` (the labels
its selectors match on, and those it aggregates or matches by), or ``{"error": "..."}``. A
selector without a metric name (only ``{__name__=~...}``) is an error: its series cannot be
checked.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import promql_parser  # type: ignore[import-not-found]


def uses(expression: str) -> dict[str, Any]:
    matchers: dict[str, set[str]] = {}
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"a selector without a metric name: {node.prettify()}")
            labels = {m.name for m in node.matchers.matchers}
            matchers.setdefault(node.name, set()).update(labels)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                grouping.update(matching.labels)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return {
        "names": sorted(matchers),
        "matchers": {name: sorted(labels) for name, labels in matchers.items()},
        "grouping": sorted(grouping),
    }


def main() -> None:
    answers: list[dict[str, Any]] = []
    for expression in json.load(sys.stdin):
        try:
            answers.append(uses(expression))
        except ValueError as error:
            answers.append({"error": str(error)})
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
