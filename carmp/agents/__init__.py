"""The agent layer: CAR's agent types (types.py); the runner and the coordination patterns
that run agents in worker processes build on them."""
