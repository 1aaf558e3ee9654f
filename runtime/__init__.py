"""Loading, running and timing lowered programs."""
