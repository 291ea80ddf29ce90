"""The one exception type users see: a one-line message that says what is wrong and how to fix it."""


class LangNeuronsError(ValueError):
    """Bad input or state, reported in one line with the fix.

    A ``ValueError`` subclass so callers that already catch ``ValueError`` keep working; the
    command line prints it without a traceback and exits with status 2.
    """
