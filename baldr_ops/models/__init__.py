"""Model files: footprint estimates from headers, the embedded demo model."""
