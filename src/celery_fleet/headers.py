"""Message headers celery-fleet adds to every task it publishes."""

#: Unix time (float seconds) at which the message was published; the exporter reads
#: it from the oldest waiting message to report queue latency.
PUBLISHED_AT_HEADER = "x-fleet-published-at"
