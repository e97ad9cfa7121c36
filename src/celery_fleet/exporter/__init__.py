"""Queue metrics that tell the truth: a Prometheus exporter for a Celery fleet.

* :mod:`.redis_accounting` — waiting (every priority list), held (kombu's ``unacked``
  hash) and oldest-message age per queue, read from Redis in one round trip;
* :mod:`.amqp_accounting` — messages and consumers per queue from RabbitMQ
  (passive ``queue.declare``);
* :mod:`.task_series` — celery-exporter's task series from the totals workers write
  (``celery_fleet.task_metrics``), and its ``hostname`` spelling;
* :mod:`.worker_probe` — which queues and how many processes each new worker has (asked
  once); worker liveness comes from ``celery_fleet.event_stream`` (no broadcast ``inspect``
  on the scrape path);
* :mod:`.collectors` — the Prometheus collectors reading all of it at scrape time;
* :mod:`.server` / :mod:`.cli` — ``celery-fleet exporter`` serving ``/metrics`` and ``/healthz``.
"""
