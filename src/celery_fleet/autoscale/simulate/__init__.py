"""``celery-fleet simulate``: a workload replayed through celery-fleet's scaling policy and
through KEDA's and the HPA's defaults, on paper.

One concern per module:

* :mod:`.workload` - arrivals (built-in profiles, CSV files) and task durations;
* :mod:`.model` - the discrete-time model of one worker group and its scaler;
* :mod:`.report` - the text table (with its column legend) and the JSON report;
* :mod:`.plot` - the picture, shared with ``bench/autoscale.py``;
* :mod:`.command` - the click command, which only wires the four together.
"""
