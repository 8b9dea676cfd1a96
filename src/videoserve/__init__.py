"""videoserve: a self-hostable serverless API for video generation."""

__version__ = "0.1.0"
