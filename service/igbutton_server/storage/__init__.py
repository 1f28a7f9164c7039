"""Durable state behind one interface per kind, with an embedded SQLite engine by default."""
