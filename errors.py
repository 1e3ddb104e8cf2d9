"""The error every script reports as one line: UserError (bad flags, data or checkpoint), and
first_line, which shortens an exception's message for such a line.

It lives alone, below everything, because the paper's modules (data.py, training.py) and the harness
package all raise it, and the paper's modules must not import the package. It must stay a leaf: no
project imports, nothing but what an error message needs.
"""


class UserError(Exception):
    """Bad input (flags, data, checkpoint): reported as one line on stderr, exit status 2."""


def first_line(error):
    """The first line of an exception's message (torch's can run to many lines)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
