"""The one exception type users see: its message is printed as a single line by the CLI."""


class MPRMError(ValueError):
    """A user-facing error: bad input, a missing file, no network. Never a bug in mprm_hf."""
