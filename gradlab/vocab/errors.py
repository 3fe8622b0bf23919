"""The errors gradlab raises on purpose.

Everything the user can get wrong (a config, a data file, an output folder) is a `GradlabError`;
the CLI turns it into one line per problem and exit code 2 (a class may say another: a full disk
is 74), never a traceback. Anything else that escapes is a bug in gradlab and is allowed to show
its traceback.
"""

from __future__ import annotations


class GradlabError(Exception):
    """Base class: bad input the user can fix. `lines` are printed one per line."""

    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class ConfigError(GradlabError):
    """The experiment config (file, overrides or values) is not valid."""


class DataError(GradlabError):
    """A dataset file is missing, malformed or does not fit the config."""


class RunError(GradlabError):
    """A run cannot be started or read (output folder, run directory, records)."""


# Exit code of a full disk (or an exhausted quota): sysexits.h's EX_IOERR. Documented in docs/troubleshooting.md.
DISK_FULL_EXIT = 74


class DiskFull(GradlabError):
    """No space left (or the quota exhausted) while writing records: one line naming the file and
    what was being written; every whole step written before is kept."""

    exit_code = DISK_FULL_EXIT


class ExpectationFailed(GradlabError):
    """A config's `expect:` section was violated. Exit code 1: the run itself is fine."""

    exit_code = 1
