"""The embedded engine: every store on one SQLite file (a single replica)."""
