"""The runtime layer: what runs inside an agent (its state overlay, and later its executor)."""
