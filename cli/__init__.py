"""pt2q's command-line entry points."""
