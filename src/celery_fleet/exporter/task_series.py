"""celery-exporter's task series, from the totals workers and publishers write (``task_metrics``).

At scrape time one ``EVALSHA`` of :data:`READ_SCRIPT` (in the same pipeline as the queue
read when the metrics live on the broker) returns every source written to within the purge
delay with all its fields; nothing is kept between scrapes, so any number of exporter
replicas report the same numbers and a restarted exporter loses nothing.

Series and labels are celery-exporter's: ``celery_task_<event>_total`` with ``name``,
``hostname``, ``queue_name`` (and ``exception`` on failures), the ``celery_task_runtime`` and
``celery_task_queue_wait_time`` histograms.  ``hostname`` is the worker's, spelled by
:class:`HostnameLabels`; on ``celery_task_sent_total`` it is the publisher's host.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from celery_fleet.event_stream import host_of
from celery_fleet.task_metrics import (
    COUNTER_EVENTS,
    HISTOGRAMS,
    HOST_SOURCE,
    KEY_PREFIX,
    SEP,
    SOURCES_KEY,
    WORKER_SOURCE,
)

#: KEYS[1]: the sources set; ARGV[1]: the oldest last-write score still reported, ARGV[2]: the
#: hashes' key prefix.  Returns source, score and HGETALL's flat list for each source.
READ_SCRIPT = """
local out = {}
local sources = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')
for i = 1, #sources, 2 do
  out[#out + 1] = sources[i]
  out[#out + 1] = sources[i + 1]
  out[#out + 1] = redis.call('HGETALL', ARGV[2] .. sources[i])
end
return out
"""

COUNTER_HELP = {
    "sent": "Sent when a task message is published.",
    "received": "Sent when the worker receives a task.",
    "started": "Sent just before the worker executes the task.",
    "succeeded": "Sent if the task executed successfully.",
    "failed": "Sent if the execution of the task failed.",
    "retried": "Sent if the task failed, but will be retried in the future.",
    "revoked": "Sent if the task has been revoked.",
    "rejected": "The task was rejected by the worker, possibly to be re-queued or moved to a dead "
    "letter queue.",
}
HISTOGRAM_HELP = {
    "runtime": "Histogram of task runtime measurements.",
    "queue_wait_time": "Histogram of the time tasks spend waiting in the queue before being executed, "
    "excluding deliberate ETA/countdown delay.",
}


@dataclass(frozen=True)
class Source:
    """What one worker (``worker:<node>``) or one host's publishers (``host:<hostname>``) wrote."""

    source: str
    last_write: float
    fields: dict[str, str]


def script_args(now: float, purge_after: float) -> tuple[list[str], list[Any]]:
    return [SOURCES_KEY], [now - purge_after, KEY_PREFIX]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_reply(reply: Sequence[Any]) -> list[Source]:
    sources = []
    for i in range(0, len(reply), 3):
        flat = reply[i + 2]
        fields = {_text(flat[j]): _text(flat[j + 1]) for j in range(0, len(flat), 2)}
        sources.append(Source(_text(reply[i]), float(reply[i + 1]), fields))
    return sources


class HostnameLabels:
    """celery-exporter's ``hostname`` label (the node name's host part) where that stays unique.

    In a cluster the host part is the pod name, unique per worker.  Workers that share a host
    (several on one machine, as ``celery-fleet up`` runs them) would merge into one series, so
    they keep their full node name: every host part seen with two node names, and the
    exporter's own host (a local fleet), is spelled in full from then on (sticky, so a label
    does not change when a worker leaves).
    """

    def __init__(self, own_host: str | None = None) -> None:
        self._shared = {own_host or socket.gethostname()}
        self._nodes_of: defaultdict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def observe(self, nodenames: Iterable[str]) -> None:
        with self._lock:
            for node in nodenames:
                host = host_of(node)
                self._nodes_of[host].add(node)
                if len(self._nodes_of[host]) > 1:
                    self._shared.add(host)

    def __call__(self, nodename: str) -> str:
        host = host_of(nodename)
        with self._lock:
            return nodename if host in self._shared or not host else host


def source_hostname(source: str, labels: HostnameLabels) -> str:
    if source.startswith(WORKER_SOURCE):
        return labels(source.removeprefix(WORKER_SOURCE))
    return source.removeprefix(HOST_SOURCE)


def worker_nodes(sources: Iterable[Source]) -> list[str]:
    return [s.source.removeprefix(WORKER_SOURCE) for s in sources if s.source.startswith(WORKER_SOURCE)]


def task_families(sources: Sequence[Source], labels: HostnameLabels) -> Iterator[Metric]:
    """The task series of every source, summed where two sources share a label set."""
    labels.observe(worker_nodes(sources))
    counters: dict[str, defaultdict[tuple[str, ...], float]] = {e: defaultdict(float) for e in COUNTER_EVENTS}
    buckets: dict[str, defaultdict[tuple[str, str, str], list[float]]] = {
        m: defaultdict(list) for m in HISTOGRAMS
    }
    sums: dict[str, defaultdict[tuple[str, str, str], float]] = {m: defaultdict(float) for m in HISTOGRAMS}
    for source in sources:
        hostname = source_hostname(source.source, labels)
        for key, text in source.fields.items():
            kind, *parts = key.split(SEP)
            try:
                if kind == "c" and len(parts) == 4 and parts[0] in counters:
                    event, name, queue, exception = parts
                    label_set = (
                        (name, hostname, queue, exception) if event == "failed" else (name, hostname, queue)
                    )
                    counters[event][label_set] += float(text)
                elif kind == "b" and len(parts) == 4 and parts[0] in buckets:
                    metric, name, queue, index = parts
                    counts = buckets[metric][(name, hostname, queue)]
                    counts.extend([0.0] * (len(HISTOGRAMS[metric]) - len(counts)))
                    counts[int(index)] += float(text)
                elif kind == "s" and len(parts) == 3 and parts[0] in sums:
                    metric, name, queue = parts
                    sums[metric][(name, hostname, queue)] += float(text)
            except (ValueError, IndexError):
                continue  # a field this version does not know: skip it, keep the scrape
    for event in COUNTER_EVENTS:
        names = (
            ["name", "hostname", "queue_name", "exception"]
            if event == "failed"
            else ["name", "hostname", "queue_name"]
        )
        counter = CounterMetricFamily(f"celery_task_{event}", COUNTER_HELP[event], labels=names)
        for counted, total in sorted(counters[event].items()):
            counter.add_metric(list(counted), total)
        yield counter
    for metric, bounds in HISTOGRAMS.items():
        histogram = HistogramMetricFamily(
            f"celery_task_{metric}", HISTOGRAM_HELP[metric], labels=["name", "hostname", "queue_name"]
        )
        for label_set in sorted(set(buckets[metric]) | set(sums[metric])):
            counts = buckets[metric].get(label_set) or [0.0] * len(bounds)
            cumulative, running = [], 0.0
            for bound, count in zip(bounds, counts, strict=False):
                running += count
                cumulative.append((_le(bound), running))
            histogram.add_metric(list(label_set), cumulative, sum_value=sums[metric].get(label_set, 0.0))
        yield histogram


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
