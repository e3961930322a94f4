"""Where the configuration is read: YAML with positions and one-line error wording
(reading), the schema check and merge into `Settings` (settings), the command line (cmdline).
See docs/architecture.md.
"""
