"""Signed, durable webhook deliveries (Standard Webhooks)."""
