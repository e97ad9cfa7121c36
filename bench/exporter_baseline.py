"""The physical limit of a queue-length scrape: one pipelined ``LLEN`` per list, nothing else.

    python bench/exporter_baseline.py --broker-url redis://... --queues q0,q1 --port 9999

A bare prometheus-client collector (the same client library and HTTP server as
``celery-fleet exporter``) that sends one pipeline of ``LLEN`` for every priority list of every
queue and reports ``celery_queue_length`` per queue: no held messages, no oldest age, no
workers, no task series.  ``bench/exporter.py`` scrapes it side by side with the real exporter.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterable, Iterator

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SEP = "\x06\x16"


class LlenCollector(Collector):
    def __init__(self, client: redis.Redis, queues: list[str], steps: list[int]) -> None:
        self.client = client
        self.keys = [(q, q if s == 0 else f"{q}{SEP}{s}") for q in queues for s in steps]

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self.client.pipeline(transaction=False) as pipe:
            for _, key in self.keys:
                pipe.llen(key)
            lengths = pipe.execute()
        totals: dict[str, int] = {}
        for (queue, _), n in zip(self.keys, lengths, strict=True):
            totals[queue] = totals.get(queue, 0) + int(n)
        family = GaugeMetricFamily("celery_queue_length", "Waiting messages.", labels=["queue_name"])
        for queue, n in totals.items():
            family.add_metric([queue], n)
        yield family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--queues", required=True)
    parser.add_argument("--steps", default="0,3,6,9", help="priority steps (lists per queue)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    registry = CollectorRegistry(auto_describe=False)
    client = redis.Redis.from_url(args.broker_url)
    steps = [int(s) for s in args.steps.split(",")]
    registry.register(LlenCollector(client, args.queues.split(","), steps))
    server, _thread = start_http_server(args.port, addr=args.host, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
