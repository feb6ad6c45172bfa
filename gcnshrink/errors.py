"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and exit code 2. Everything else is a bug and keeps its
traceback.
"""


class GcnshrinkError(Exception):
    """Bad input: a file, a flag or a value the user can fix. Shown as one line, exit code 2."""
