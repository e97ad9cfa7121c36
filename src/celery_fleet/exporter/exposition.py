"""``/metrics`` bodies byte for byte as prometheus-client writes them, without re-escaping every scrape.

prometheus-client validates and escapes every metric name, label name and label value on
every scrape (about 2.5 us a sample in the text format, 6 us in OpenMetrics, what Prometheus
asks for): for the exporter's ~270 samples that is most of a scrape's CPU once Redis has
answered.  Those strings hardly ever change between scrapes; only the values do.  So:

* the format and the content type are the library's (:func:`choose_encoder`, the same
  negotiation as its ``make_wsgi_app``);
* each family's header lines (``# HELP``/``# TYPE``/``# UNIT``) and each series' line up to its
  value (``name{labels} ``) are rendered **by the library itself**, from a copy of the family
  holding no sample or that one sample, and kept;
* per scrape only the values are formatted, with the library's ``floatToGoString``.

What this cannot reproduce exactly goes to the library, family by family: types other than
counter/gauge/histogram/summary/unknown (info, stateset, gaugehistogram), samples with a
timestamp, an exemplar, a native histogram or no value, and the samples the text format moves
out of their family (``_created``, ``_gsum``, ``_gcount``).  A render whose shape is not
"header, one line per sample ending in the value, trailer" is not cached either.

The cache is bounded (:attr:`CachedExposition.max_entries` lines per format, at most
:attr:`~CachedExposition.max_formats` formats): series come and go (workers, task names), and a
client picks the format, so neither may grow it for ever.  When a format's lines are full, a
scrape keeps only the lines it used and renders what did not fit through the library.
"""

from __future__ import annotations

import copy
import functools
import gzip
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Encoder = Callable[[Collector], bytes]

#: Types whose text and OpenMetrics renderings are "header + one line per sample, in order".
CACHEABLE_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "unknown"})
#: Samples the text format takes out of their family into a gauge family of their own.
MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")
#: Lines kept per format, ~400 bytes each (~20 MB): a registry with more live series than this
#: renders the rest through the library each scrape (exact, only slower).
DEFAULT_MAX_ENTRIES = 50_000
#: Formats kept at once: Prometheus asks for one, a person with curl another.  The version in an
#: Accept header is the client's free text, so the number of formats is bounded as well.
DEFAULT_MAX_FORMATS = 3
#: prometheus-client gzips at level 9.  A scrape body is small and repetitive: for the
#: exporter's 19.6 kB level 1 takes 0.03 ms for 2.8 kB, level 9 0.16 ms for 2.4 kB.  The body
#: crosses loopback or a cluster network, where 400 bytes cost less than 0.13 ms of CPU.
GZIP_LEVEL = 1

#: The library's value formatting (Go's float syntax: ``+Inf``, ``1e+06``), typed.
format_value: Callable[[float], str] = floatToGoString


class CollectedFamilies:
    """A collector that yields families already collected (the library's encoders take a collector)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def format_key(encoder: Encoder) -> Hashable:
    """Two encoders with the same key write the same bytes (``choose_encoder`` returns partials)."""
    if isinstance(encoder, functools.partial):
        return (encoder.func, encoder.args, tuple(sorted(encoder.keywords.items())))
    return encoder


def _with_samples(metric: Metric, samples: list[Sample]) -> Metric:
    """The family (name, type, help, unit) holding only ``samples``, for the library to render."""
    family = copy.copy(metric)
    family.samples = samples
    return family


@dataclass
class RenderCounts:
    """What the renders did, so tests (and a curious operator) can see which path ran."""

    cached_families: int = 0
    library_families: int = 0
    rendered_lines: int = 0


@dataclass
class _Format:
    """The cached pieces of one output format, all rendered by its encoder."""

    encoder: Encoder
    trailer: str  # what the encoder writes for no family at all ("# EOF\n" in OpenMetrics)
    headers: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.headers) + len(self.prefixes)


class CachedExposition:
    """Renders collected families in any format the library negotiates, caching all but the values."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_formats: int = DEFAULT_MAX_FORMATS
    ) -> None:
        if max_entries < 1 or max_formats < 1:
            raise ValueError("max_entries and max_formats must be at least 1")
        self.max_entries = max_entries
        self.max_formats = max_formats
        self.counts = RenderCounts()
        self._formats: dict[Hashable, _Format] = {}  # in order of last use
        # Concurrent scrapes (the server is threaded) each collect on their own; only the
        # render, pure CPU under the GIL anyway, is serialised so the cache stays consistent.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Cached lines over all formats (at most ``max_entries`` per format)."""
        return sum(len(f) for f in self._formats.values())

    def sizes(self) -> list[int]:
        """Cached lines of each format kept, least recently used first."""
        return [len(f) for f in self._formats.values()]

    def render(self, families: Sequence[Metric], encoder: Encoder) -> bytes:
        """What ``encoder`` writes for ``families``, with cached names and labels."""
        with self._lock:
            fmt = self._format(encoder)
            out: list[str] = []
            used: list[tuple[str, tuple[tuple[str, str], ...]]] = []
            refused = False
            for metric in families:
                mark = len(out)
                cached = self._cached_family(fmt, metric, out, used)
                if cached is None:
                    refused = True
                    cached = False
                if cached:
                    self.counts.cached_families += 1
                else:
                    del out[mark:]
                    out.append(self._library(fmt, [metric]))
                    self.counts.library_families += 1
            out.append(fmt.trailer)
            if refused:
                self._keep_only(fmt, families, used)
            return "".join(out).encode("utf-8")

    def _format(self, encoder: Encoder) -> _Format:
        key = format_key(encoder)
        fmt = self._formats.pop(key, None)
        if fmt is None:
            if len(self._formats) >= self.max_formats:
                del self._formats[next(iter(self._formats))]  # the least recently used
            fmt = _Format(encoder, encoder(CollectedFamilies([])).decode("utf-8"))
        self._formats[key] = fmt  # now the most recently used
        return fmt

    def _library(self, fmt: _Format, families: list[Metric]) -> str:
        text = fmt.encoder(CollectedFamilies(families)).decode("utf-8")
        return text[: len(text) - len(fmt.trailer)]

    def _room(self, fmt: _Format) -> bool:
        return len(fmt) < self.max_entries

    def _cached_family(
        self,
        fmt: _Format,
        metric: Metric,
        out: list[str],
        used: list[tuple[str, tuple[tuple[str, str], ...]]],
    ) -> bool | None:
        """Appends the family's lines to ``out``: True, or False (the library must render it),
        or None (the same, and the cache was full)."""
        if metric.type not in CACHEABLE_TYPES:
            return False
        header_key = (metric.name, metric.type, metric.documentation, metric.unit)
        header = fmt.headers.get(header_key)
        if header is None:
            header = self._library(fmt, [_with_samples(metric, [])])
            if not self._room(fmt):
                return None
            fmt.headers[header_key] = header
        out.append(header)
        moved = {metric.name + suffix for suffix in MOVED_SUFFIXES}
        prefixes = fmt.prefixes
        for s in metric.samples:
            if (
                s.value is None
                or s.timestamp is not None
                or s.exemplar is not None
                or s.native_histogram is not None
                or s.name in moved
            ):
                return False
            key = (s.name, tuple(s.labels.items()))
            prefix = prefixes.get(key)
            value = format_value(s.value)
            if prefix is None:
                line = self._library(fmt, [_with_samples(metric, [s])])
                self.counts.rendered_lines += 1
                ending = f" {value}\n"
                body = line[len(header) :]
                if not (line.startswith(header) and body.endswith(ending) and body.count("\n") == 1):
                    return False  # not the header and one line ending in the value: not ours to cut
                prefix = body[: len(body) - len(ending) + 1]  # up to and with the space
                if not self._room(fmt):
                    return None
                prefixes[key] = prefix
            used.append(key)
            out.append(prefix)
            out.append(value)
            out.append("\n")
        return True

    def _keep_only(
        self,
        fmt: _Format,
        families: Sequence[Metric],
        used: list[tuple[str, tuple[tuple[str, str], ...]]],
    ) -> None:
        """The format's lines were full: make room by forgetting those this scrape did not use."""
        live = {(m.name, m.type, m.documentation, m.unit) for m in families}
        fmt.headers = {k: v for k, v in fmt.headers.items() if k in live}
        wanted = dict.fromkeys(used)
        fmt.prefixes = {k: fmt.prefixes[k] for k in wanted}


def metrics_app(registry: CollectorRegistry, exposition: CachedExposition | None = None) -> WSGIApp:
    """``/metrics`` as prometheus-client's ``make_wsgi_app`` serves it, rendered by ``exposition``."""
    cache = exposition if exposition is not None else CachedExposition()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", "OPTIONS,GET")])
            return [b""]
        if method != "GET":
            start_response("405 Method Not Allowed", [("Allow", "OPTIONS,GET")])
            return [f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode()]
        params = parse_qs(environ.get("QUERY_STRING", ""))
        # The library's name[] filter (a Prometheus `params:` or a person narrowing the output).
        source: Collector = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT") or "")
        body = cache.render(list(source.collect()), encoder)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING") or ""):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app
