"""The SAE library's own error: a problem with an SAE or the activations given to it.

The library raises it in its own terms; the `sae` command line turns it into one line and a
hint (cli/sae). No torch here, so the CLI can name it before torch is imported.
"""


class SAEError(ValueError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
