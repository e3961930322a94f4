"""Example workers: every module below this package is loaded by `namespaces: [examples.workers]`."""
