"""The farm: a supervisor that owns the shared world and a pool of worker processes."""
