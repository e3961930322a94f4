"""Example workers: `namespaces: [examples.workers]` loads every module below this package."""
