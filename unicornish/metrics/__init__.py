"""Prometheus metrics: the master's own families (families.py), the apps' metrics
in shared memory (appmetrics.py, summed by appcollector.py), the text both
formats share (exposition.py), the --metrics endpoint (endpoint.py)."""
