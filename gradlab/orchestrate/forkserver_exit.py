"""Imported only by the forkserver of a `--jobs N` sweep (local_pool.WORKER_PRELOAD): when the sweep's
process has exited, the server ends at once instead of finalizing the interpreter.

The forkserver inherits the command's standard output and error, so a pipe reading them (`gradlab
run ... | tee`, a script's subprocess) stays open until the server is gone, and finalizing an
interpreter that has imported torch took about a second after the sweep itself had exited. The
server holds nothing that needs finalizing (it only forks workers, which end on their own with
os._exit and are never finalized through this handler), so it skips that step.
"""

import atexit
import os

atexit.register(os._exit, 0)
