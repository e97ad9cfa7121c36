"""Queue names shared by the example project, the local fleet and the chart defaults."""

DEFAULT_QUEUE = "default"
EXPORTS_QUEUE = "exports"
PERIODIC_QUEUE = "periodic"
