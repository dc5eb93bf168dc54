"""Integrations with other libraries; each module needs its library installed."""
