"""Defaults the command line shows in --help, kept apart so registering the CLI imports no research code."""

BUILTIN_NAME = "builtin"          # what --text takes for the built-in corpus
DEFAULT_MASSIVE_FACTOR = 10.0     # a token whose norm passes this multiple of the median is "massive"
