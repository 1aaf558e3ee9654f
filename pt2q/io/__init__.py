"""Files: safe .pt2 loading, digests, atomic writes, and keeping third-party noise out of pt2q's output."""
