"""Stream Django querysets as CSV or NDJSON with constant memory."""

__version__ = "0.1.0.dev0"
