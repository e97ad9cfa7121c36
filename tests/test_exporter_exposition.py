"""The cached exposition writes prometheus-client's bytes, for every format it negotiates.

Real data: messages published by Celery to a real redis-server at several priorities, one of
them delivered unacked (held), task totals counted by celery-fleet's recorder and flushed to
Redis as workers do, worker heartbeats as Celery sends them.  Each scrape collects once and
renders the same families with the cache and with the library, so the comparison is exact
while values change and series come and go.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

from celery_fleet.event_stream import WorkerTable
from celery_fleet.exporter import exposition as exposition_module
from celery_fleet.exporter.cli import Exporter
from celery_fleet.exporter.exposition import CachedExposition, CollectedFamilies, metrics_app
from celery_fleet.headers import PUBLISHED_AT_HEADER
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.task_metrics import SOURCES_KEY, Batch, Flusher, TaskRecorder

#: What Prometheus 3 sends by default (scrape/scrape.go ``acceptHeader`` over
#: config.DefaultScrapeProtocols, escaping from metric_name_escaping_scheme = allow-utf-8).
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
ACCEPTS = {
    "none": None,
    "any": "*/*",
    "prometheus-3": PROMETHEUS_3,
    "openmetrics-0.0.1": "application/openmetrics-text;version=0.0.1",
    "openmetrics-1.0.0": "application/openmetrics-text;version=1.0.0",
    "openmetrics-1.0.0-utf8": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "openmetrics-unversioned": "application/openmetrics-text",
    "text-0.0.4": "text/plain;version=0.0.4",
    "text-1.0.0-utf8": "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text-1.0.0-dots": "text/plain;version=1.0.0;escaping=dots",
    "text-1.0.0-values": "text/plain;version=1.0.0;escaping=values",
}
QUEUES = ["default", "exports", "priorité"]  # a name the underscores escaping must not touch
TRANSPORT = {
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
    "visibility_timeout": 3600,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    """The exporter's registry over a real Redis, and the means to change what it reports."""

    def __init__(self, redis_server: RedisServer, client: redis.Redis) -> None:
        self.client = client
        self.url = redis_server.url
        self.app = Celery("exposition-test", broker=self.url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options=TRANSPORT, task_serializer="json", task_create_missing_queues=True
        )
        self.clock = Clock()
        self.exporter = Exporter(broker_url=self.url, queues=QUEUES, events=False, port=0, purge_after=600)
        self.exporter.workers = WorkerTable(forget_after=600, clock=self.clock)
        self.exporter.build()
        self.registry = self.exporter.registry
        self.batches: dict[str, tuple[Batch, TaskRecorder, Flusher]] = {}
        self.sent = dict.fromkeys(QUEUES, 0)
        self.task_ids = 0
        self.consumer = Connection(self.url, transport_options=TRANSPORT)

    def send(self, queue: str, priority: int, n: int = 1) -> None:
        for _ in range(n):
            headers = {PUBLISHED_AT_HEADER: time.time() - 30}
            self.app.send_task("jobs.tasks.noop", queue=queue, priority=priority, headers=headers)
        self.sent[queue] += n

    def heartbeat(self, hostname: str, active: int = 0) -> None:
        self.exporter.workers.on_event(
            {"type": "worker-heartbeat", "hostname": hostname, "freq": 2.0, "active": active}
        )

    def run_tasks(self, worker: str, name: str, queue: str, *, ok: int, failed: int = 0) -> None:
        """Task events of one worker, counted and flushed to Redis as its TaskMetricsStep does."""
        if worker not in self.batches:
            batch = Batch()
            self.batches[worker] = (batch, TaskRecorder(batch), Flusher(batch, self.url, f"worker:{worker}"))
        _, recorder, flusher = self.batches[worker]
        for i in range(ok + failed):
            self.task_ids += 1
            uuid = f"t{self.task_ids}"
            request = SimpleNamespace(
                id=uuid,
                name=name,
                delivery_info={"routing_key": queue},
                request_dict={PUBLISHED_AT_HEADER: time.time() - 2.0},
                eta=None,
            )
            recorder.on_received(request)
            recorder.on_event("task-received", {"uuid": uuid, "name": name})
            recorder.on_event("task-started", {"uuid": uuid})
            if i < ok:
                recorder.on_event("task-succeeded", {"uuid": uuid, "runtime": 0.03 * (i + 1)})
            else:
                recorder.on_event("task-failed", {"uuid": uuid, "exception": "ValueError('bad \"input\"')"})
        assert flusher.flush()

    def forget_source(self, worker: str) -> None:
        """A worker that stopped writing long ago: its task series leave after the purge delay."""
        self.client.zadd(SOURCES_KEY, {f"worker:{worker}": time.time() - 10_000})

    def take(self, queue: str) -> Any:
        """Deliver one message unacked (into kombu's unacked hash), as a worker's prefetch does;
        it stays held while the connection stays open (closing the channel restores it)."""
        bound = Queue(queue, Exchange(queue), routing_key=queue).bind(self.consumer.default_channel)
        message = bound.get(no_ack=False)
        assert message is not None, f"nothing to take from {queue}"
        return message

    def drain(self, queue: str) -> None:
        with Connection(self.url, transport_options=TRANSPORT) as conn:
            bound = Queue(queue, Exchange(queue), routing_key=queue).bind(conn.default_channel)
            while (message := bound.get(no_ack=True)) is not None:
                del message
        self.sent[queue] = 0


@pytest.fixture
def fleet(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Fleet]:
    running = Fleet(redis_server, redis_client)
    yield running
    running.consumer.release()
    running.app.close()


def library(families: list[Metric], accept: str | None) -> bytes:
    encoder, _ = choose_encoder(accept or "")
    return encoder(CollectedFamilies(families))


def ours(cache: CachedExposition, families: list[Metric], accept: str | None) -> bytes:
    encoder, _ = choose_encoder(accept or "")
    return cache.render(families, encoder)


def values(body: bytes, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``metric``'s samples in a text-format body, by label set (the library's own parser)."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == metric:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def scenes(fleet: Fleet) -> Iterator[str]:
    """Changes of the fleet between scrapes: values move, series appear and disappear."""
    fleet.send("default", 0, 3)
    fleet.send("default", 6, 2)
    fleet.send("exports", 9, 4)
    fleet.take("exports")  # one held
    fleet.heartbeat("celery@worker-a", active=1)
    fleet.heartbeat("celery@worker-b")
    fleet.run_tasks("celery@worker-a", "jobs.tasks.noop", "default", ok=3)
    yield "first"
    fleet.send("priorité", 3, 2)  # a queue's first non-empty priority list
    fleet.run_tasks("celery@worker-b", "jobs.tasks.export", "exports", ok=1, failed=2)  # new task series
    fleet.heartbeat("celery@worker-c", active=2)  # a new worker
    fleet.clock.now += 5
    yield "grown"
    fleet.drain("default")  # its priority series disappear
    fleet.exporter.workers.on_event({"type": "worker-offline", "hostname": "celery@worker-b"})
    fleet.run_tasks("celery@worker-a", "jobs.tasks.noop", "default", ok=5)
    yield "drained"
    fleet.forget_source("celery@worker-b")  # worker-b's task series leave
    fleet.clock.now += 700  # every worker silent past the purge delay: their series leave
    yield "purged"


@pytest.mark.parametrize("accept", list(ACCEPTS.values()), ids=list(ACCEPTS))
def test_every_scrape_is_the_librarys_bytes(fleet: Fleet, accept: str | None) -> None:
    cache = CachedExposition()
    seen: dict[str, bytes] = {}
    for scene in scenes(fleet):
        families = list(fleet.registry.collect())
        lines_before = cache.counts.rendered_lines
        assert ours(cache, families, accept) == library(families, accept), scene
        if scene != "first":
            # Only the series new in this scene were rendered by the library; the rest came cached.
            assert cache.counts.rendered_lines - lines_before < sum(len(m.samples) for m in families) / 2
        seen[scene] = library(families, "text/plain;version=0.0.4")
        # Unchanged series a second time: values only, not a single line rendered again.
        again = list(fleet.registry.collect())
        lines_before = cache.counts.rendered_lines
        assert ours(cache, again, accept) == library(again, accept), scene
        assert cache.counts.rendered_lines == lines_before
    assert cache.counts.library_families == 0  # the exporter's families are all cacheable

    # The scenes did what they say (so the comparisons above covered those states).
    length = {dict(k)["queue_name"]: v for k, v in values(seen["first"], "celery_queue_length").items()}
    assert length == {"default": 5.0, "exports": 3.0, "priorité": 0.0}
    assert values(seen["first"], "celery_fleet_queue_held") == {(("queue_name", "exports"),): 1.0} | {
        (("queue_name", q),): 0.0 for q in ("default", "priorité")
    }
    assert set(values(seen["grown"], "celery_task_failed_total")) > set(
        values(seen["first"], "celery_task_failed_total")
    )
    assert len(values(seen["grown"], "celery_worker_up")) == 3
    assert not any(
        dict(k)["queue_name"] == "default"
        for k in values(seen["drained"], "celery_fleet_queue_priority_length")
    )
    assert values(seen["drained"], "celery_worker_up")[(("hostname", "worker-b"),)] == 0.0
    assert values(seen["purged"], "celery_worker_up") == {}
    assert b"worker-b" not in seen["purged"]
    assert b'queue_wait_time_bucket{hostname="worker-a"' in seen["purged"]


class Uncacheable:
    """Families whose rendering the cache must leave to the library (each for its own reason)."""

    def collect(self) -> Iterator[Metric]:
        created = CounterMetricFamily("fleet_batches", "With a _created sample.", labels=["queue_name"])
        created.add_metric(["default"], 4, created=1_700_000_000.5)
        yield created  # the text format moves _created into a gauge family of its own
        stamped = GaugeMetricFamily("fleet_stamped", "A sample with a timestamp.")
        stamped.add_metric([], 2.0, timestamp=1_700_000_001.25)
        yield stamped
        exemplar = Metric("fleet_exemplar", "A counter with an exemplar.", "counter")
        exemplar.add_sample("fleet_exemplar_total", {}, 7.0, exemplar=Exemplar({"trace_id": "abc"}, 1.0))
        yield exemplar
        info = InfoMetricFamily("fleet_build", "Info type.", value={"version": '1.2 "rc"'})
        yield info
        state = StateSetMetricFamily("fleet_mode", "Stateset type.", value={"drain": True, "run": False})
        yield state
        # Cacheable, with names and values every escaping treats differently.
        odd = GaugeMetricFamily("fleet_odd", 'Help with a "quote", a \\ and\na newline.', labels=["label"])
        odd.add_metric(['va"l\\ue\nü'], 1e21)
        odd.add_metric(["inf"], float("inf"))
        odd.add_metric(["million"], 1e6)
        odd.add_metric(["nan"], float("nan"))
        odd.add_metric(["negative zero"], -0.0)
        yield odd
        dotted = GaugeMetricFamily("fleet.dotted.name", "A UTF-8 metric name.", labels=["dotted.label"])
        dotted.add_metric(["x"], 3)
        yield dotted


@pytest.mark.parametrize("accept", list(ACCEPTS.values()), ids=list(ACCEPTS))
def test_what_the_cache_cannot_reproduce_is_rendered_by_the_library(fleet: Fleet, accept: str | None) -> None:
    fleet.send("default", 3, 2)
    fleet.registry.register(Uncacheable())
    cache = CachedExposition()
    for _ in range(2):
        families = list(fleet.registry.collect())
        before = cache.counts.library_families
        body = ours(cache, families, accept)
        assert body == library(families, accept)
        assert cache.counts.library_families - before == 5  # created, stamped, exemplar, info, stateset
    assert cache.counts.cached_families > 0
    if accept in (None, "*/*"):
        assert b"# TYPE fleet_batches_created gauge\n" in body  # the text format's reordering happened


def test_the_comparison_catches_values_written_in_pythons_syntax(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves the byte comparisons above can fail: ``repr`` instead of the library's Go syntax
    (``inf`` for ``+Inf``, ``1000000.0`` for ``1e+06``) is caught."""
    fleet.registry.register(Uncacheable())
    families = list(fleet.registry.collect())
    cache = CachedExposition()
    assert ours(cache, families, None) == library(families, None)  # the lines are cached now
    monkeypatch.setattr(exposition_module, "format_value", repr)
    assert ours(cache, families, None) != library(families, None)


class Fixed:
    """Families collected once, so two apps scraping them see identical values."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def call(app: Any, **environ: str) -> tuple[str, dict[str, str], bytes]:
    replies: list[tuple[str, list[tuple[str, str]]]] = []
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""} | environ
    body = b"".join(app(env, lambda status, headers: replies.append((status, headers))))
    return replies[0][0], dict(replies[0][1]), body


@pytest.mark.parametrize("accept", list(ACCEPTS.values()), ids=list(ACCEPTS))
def test_the_app_answers_as_make_wsgi_app_does(fleet: Fleet, accept: str | None) -> None:
    fleet.send("exports", 9, 3)
    fleet.heartbeat("celery@worker-a")
    fleet.run_tasks("celery@worker-a", "jobs.tasks.noop", "exports", ok=2)
    registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    registry.register(Fixed(list(fleet.registry.collect())))
    theirs, mine = make_wsgi_app(registry), metrics_app(registry)
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}
    for query in ("", "name[]=celery_queue_length&name[]=celery_worker_up"):
        status, got_headers, body = call(mine, QUERY_STRING=query, **headers)
        assert (status, got_headers, body) == call(theirs, QUERY_STRING=query, **headers)
        assert (body.count(b"# TYPE ") == 2) == bool(query)  # name[] narrowed it to two families
        # gzip when accepted: other bytes (our level), the same content.
        zipped = call(mine, QUERY_STRING=query, HTTP_ACCEPT_ENCODING="gzip, deflate", **headers)
        library_zipped = call(theirs, QUERY_STRING=query, HTTP_ACCEPT_ENCODING="gzip, deflate", **headers)
        assert zipped[1] == library_zipped[1] == got_headers | {"Content-Encoding": "gzip"}
        assert gzip.decompress(zipped[2]) == gzip.decompress(library_zipped[2]) == body
    for method in ("OPTIONS", "POST"):
        assert call(mine, REQUEST_METHOD=method) == call(theirs, REQUEST_METHOD=method)


def test_the_exporter_serves_the_cache_over_http(fleet: Fleet) -> None:
    fleet.send("default", 0, 2)
    fleet.send("default", 9, 1)
    fleet.exporter.start()
    try:
        url = f"http://127.0.0.1:{fleet.exporter.server.port}/metrics"
        with httpx.Client(timeout=5) as client:
            for _ in range(2):
                response = client.get(url, headers={"Accept": PROMETHEUS_3, "Accept-Encoding": "gzip"})
                assert response.status_code == 200
                assert response.headers["content-encoding"] == "gzip"
                assert response.headers["content-type"] == choose_encoder(PROMETHEUS_3)[1]
                assert response.text.endswith("# EOF\n")
                assert 'celery_queue_length{queue_name="default"} 3.0\n' in response.text
            # The exporter's registry keeps its describe-less collectors for name[] filtering.
            narrowed = client.get(url, params={"name[]": "celery_queue_length"}).text
            assert narrowed.count("# TYPE ") == 1
            assert 'celery_queue_length{queue_name="default"} 3.0\n' in narrowed
    finally:
        fleet.exporter.stop()
    assert fleet.exporter.exposition.counts.cached_families >= 2 * 10  # the server rendered with it


def test_the_cache_stays_within_its_bounds(fleet: Fleet) -> None:
    fleet.send("default", 0, 1)
    bound = 60  # less than one scrape's lines: part of every scrape goes to the library
    cache = CachedExposition(max_entries=bound, max_formats=2)
    for round_ in range(6):
        # Workers come and go: 8 new hostnames each round, the previous round's purged.
        for i in range(8):
            fleet.heartbeat(f"celery@w{round_}-{i}", active=i % 2)
        fleet.run_tasks(f"celery@w{round_}-0", f"jobs.tasks.t{round_}", "default", ok=1)
        if round_:
            fleet.forget_source(f"celery@w{round_ - 1}-0")
        families = list(fleet.registry.collect())
        for accept in ("text/plain", PROMETHEUS_3, "text/plain;version=1.0.0;escaping=dots"):
            assert ours(cache, families, accept) == library(families, accept)
            assert max(cache.sizes()) <= bound
            assert len(cache.sizes()) <= 2
        assert sum(len(m.samples) for m in families) > bound  # the bound did bite
        fleet.clock.now += 700
    assert cache.counts.library_families > 0
    assert cache.counts.cached_families > 0


def test_a_large_enough_cache_keeps_only_live_series(fleet: Fleet) -> None:
    """Series that left are forgotten once the lines are full, so new ones get cached again."""
    fleet.send("default", 0, 1)
    families = list(fleet.registry.collect())
    cache = CachedExposition(max_entries=sum(len(m.samples) + 1 for m in families) + 12)
    for round_ in range(5):
        for i in range(4):  # 4 workers: 8 lines (up, active), replaced each round
            fleet.heartbeat(f"celery@r{round_}-{i}")
        families = list(fleet.registry.collect())
        assert ours(cache, families, PROMETHEUS_3) == library(families, PROMETHEUS_3)
        assert len(cache) <= cache.max_entries
        fleet.clock.now += 700
    # The last round fitted again after forgetting the gone workers: a repeat renders nothing.
    lines, fallbacks = cache.counts.rendered_lines, cache.counts.library_families
    assert ours(cache, families, PROMETHEUS_3) == library(families, PROMETHEUS_3)
    assert (cache.counts.rendered_lines, cache.counts.library_families) == (lines, fallbacks)


def test_concurrent_scrapes_are_each_exact(fleet: Fleet) -> None:
    fleet.send("exports", 6, 2)
    families = list(fleet.registry.collect())
    cache = CachedExposition()
    expected = {a: library(families, a) for a in (None, PROMETHEUS_3)}
    wrong: list[str | None] = []

    def scrape(accept: str | None) -> None:
        for _ in range(30):
            if ours(cache, families, accept) != expected[accept]:
                wrong.append(accept)

    threads = [threading.Thread(target=scrape, args=(a,)) for a in (None, PROMETHEUS_3) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CachedExposition(max_entries=0)
