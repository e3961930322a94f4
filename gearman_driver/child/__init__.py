"""What runs in a forked worker process: set-up and the job method wrapper (process),
recycling (recycle), and the worker side of the Gearman protocol (backends).
See docs/architecture.md.
"""
