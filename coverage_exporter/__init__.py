"""coverage_exporter: finds the nodes Prometheus does not scrape."""

__version__ = "0.1.0"
