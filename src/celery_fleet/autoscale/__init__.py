"""Autoscaling: one scaling policy (HPA v2 semantics) used by the local fleet, the simulator
and, through the chart's KEDA/HPA objects, the cluster."""
