"""`gearman-driver-console`'s entry point (kept at this path for the installed scripts and
`python -m gearman_driver.console_client`); the client lives in console/client.py."""

from gearman_driver.console.client import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
