"""Grafana dashboards evaluated the way Grafana evaluates them, against a real Prometheus.

Template variables are resolved in order, as Grafana does on load: ``label_values(selector,
label)`` queries (earlier variables substituted into later ones) through Prometheus's label
API; with no saved selection the first value is chosen, or "All" for variables that include
it, which a Prometheus data source expands to a regex alternation of every value (values of
multi-value variables regex-escaped).  Built-in variables (``$__rate_interval``, ``$__range``,
``$__interval``) get values for the dashboard's time range and the test's 1 s scrapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.prometheus import PrometheusServer

_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
#: What Grafana's Prometheus data source escapes in a multi-value variable's values.
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


@dataclass(frozen=True)
class Panel:
    title: str
    ref: str
    expr: str


class Dashboard:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))

    @property
    def title(self) -> str:
        return str(self.data.get("title", self.path.stem))

    def panels(self) -> Iterator[Panel]:
        def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for panel in panels:
                yield panel
                yield from walk(panel.get("panels", []))

        for panel in walk(self.data.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield Panel(str(panel.get("title", "")), str(target.get("refId", "")), target["expr"])

    def panel(self, title: str) -> list[Panel]:
        found = [p for p in self.panels() if p.title == title]
        assert found, f"{self.title} has no panel {title!r}"
        return found

    def resolve(self, prometheus: PrometheusServer, builtins: Mapping[str, str]) -> dict[str, str]:
        """Every template variable's substituted text, in the dashboard's order."""
        values: dict[str, str] = {}
        for variable in self.data.get("templating", {}).get("list", []):
            name = variable["name"]
            if variable.get("type") == "datasource":
                continue
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(substitute(str(query), {**builtins, **values}))
            assert match, f"{self.title}: variable {name} is not a label_values() query: {query}"
            options = prometheus.label_values(match["label"], match["selector"])
            if variable.get("regex"):
                options = [o for o in options if re.search(variable["regex"], o)]
            if variable.get("includeAll"):
                values[name] = variable.get("allValue") or "(" + "|".join(_escape(o) for o in options) + ")"
            elif not options:
                values[name] = ""  # Grafana shows "No data" for the panels that use it
            else:
                values[name] = _escape(options[0]) if variable.get("multi") else options[0]
        return values


def _escape(value: str) -> str:
    # PromQL string inside double quotes: a regex backslash is written twice.
    return _REGEX_SPECIAL.sub(r"\\\\\1", value)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown template variable ${name} in {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)
