"""The master process: the arbiter loop (driver), its processes, the scaling rule and the
autoscaler that feeds it, the gearmand observer, reload, systemd, metrics.
See docs/architecture.md.
"""
