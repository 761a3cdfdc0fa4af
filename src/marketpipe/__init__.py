"""marketpipe: Databento market data into exact, queryable tables."""

__version__ = "0.1.0"
