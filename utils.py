"""The original's utils.py names, kept so that code written against it (or against this project
before its modules were split) still runs: `from utils import batchify, get_batch, repackage_hidden`,
and `utils.load_checkpoint('PTB.pt')`.

Forwards only: each name is defined in its own home (batching.py, checkpoint.py, atomic_io.py, errors.py). No
project module imports this one, so it can import them all without an import circle; it must not
grow code of its own.
"""
from batching import batchify, get_batch, repackage_hidden  # noqa: F401
from atomic_io import content_digest  # noqa: F401
from checkpoint import load_checkpoint, read_checkpoint  # noqa: F401
from errors import UserError  # noqa: F401
