"""`launch`: preflight (read + judge), then start, gate, supervise and stop `max serve` (act)."""
