"""Metrics and logs: what an operator watches the server and its workers by."""
