"""Queue metrics that tell the truth: a Prometheus exporter for a Celery fleet.

* :mod:`.redis_accounting` — waiting (every priority list), held (kombu's ``unacked``
  hash) and oldest-message age per queue, read from Redis in O(queues) commands;
* :mod:`.amqp_accounting` — messages and consumers per queue from RabbitMQ
  (passive ``queue.declare``);
* :mod:`.events` — task counters, runtime histogram and worker liveness from
  Celery's event stream (no broadcast ``inspect`` on the scrape path);
* :mod:`.collectors` — the Prometheus collectors reading both at scrape time;
* :mod:`.server` / :mod:`.cli` — ``celery-fleet exporter`` serving ``/metrics`` and ``/healthz``.
"""
