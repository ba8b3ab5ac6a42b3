"""MAX Engine: version quirks, the `max serve` command line, in-process patches, log phases.

Nothing here imports MAX at module level: the CLI must stay fast and work where MAX is absent.
"""
