"""The one exception type users see: it carries a single line saying what was wrong and how to fix it."""


class ProbesError(Exception):
    """Bad input or an unusable environment. The CLI prints ``str(err)`` as one line and exits 2."""
