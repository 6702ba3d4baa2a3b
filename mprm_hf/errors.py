"""The one exception type users see: its message is printed as a single line by the CLI."""


class MPRMError(ValueError):
    """A user-facing error: bad input, a missing file, no network. Never a bug in mprm_hf."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): what a one-line error quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
