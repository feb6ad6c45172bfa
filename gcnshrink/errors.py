"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and exit code 2. Everything else is a bug and keeps its
traceback.
"""


class GcnshrinkError(Exception):
    """Bad input: a file, a flag or a value the user can fix. Shown as one line, exit code 2."""


class PeerFailure(GcnshrinkError):
    """Another process of a ``torchrun`` run stopped (its own message is on stderr), so this one
    stops too. Its training state, if it writes one, is kept for ``--resume``."""


class GcnshrinkNotice(UserWarning):
    """A choice gcnshrink made for the user that they may not expect (a default split, inputs it
    made up): one line. The CLI prints it as ``note: ...`` on stderr; the Python API issues it as
    a warning (``warnings.simplefilter("error", GcnshrinkNotice)`` turns it into an error)."""
