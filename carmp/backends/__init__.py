"""Where a farm's workers and shared world live: this machine (local) or a Ray cluster."""
