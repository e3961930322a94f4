"""The management console: the server in the master's loop, its commands, what they do to
the master (control), and the clients (`gearman-driver-console`, `gearman-driver reload`).
See docs/architecture.md.
"""
