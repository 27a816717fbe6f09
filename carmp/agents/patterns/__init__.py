"""CAR's coordination patterns (CAR-SPEC 2.11), one module each, running agents in farm workers."""
