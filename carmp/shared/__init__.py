"""Shared-memory primitives; each module owns the byte layout of its segment."""
