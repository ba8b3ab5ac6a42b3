"""Serving engines baldr-ops drives. Only MAX for now."""
