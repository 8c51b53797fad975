"""Exception types raised by :mod:`mmdiff`.

Every error a user can provoke with bad input derives from :class:`MMDiffError`
and from the matching built-in type (``ValueError``, ``FileNotFoundError``...),
so ``except ValueError`` keeps working for callers that do not know our types.
The message always names the offending object (file, tensor, key) and what was
expected instead.
"""


class MMDiffError(Exception):
    """Base class of all errors raised deliberately by :mod:`mmdiff`."""


class DataError(MMDiffError, ValueError):
    """Input data is malformed: wrong shape, dtype, id range, NaN, ..."""


class UnsafeFileError(DataError):
    """A file asked to load something we refuse to load (e.g. a pickle that
    references a class outside the whitelist)."""


class MissingFileError(MMDiffError, FileNotFoundError):
    """An expected input file or folder does not exist."""


class ConfigError(MMDiffError, ValueError):
    """A configuration value or command-line option is invalid."""


class CheckpointError(MMDiffError, ValueError):
    """A checkpoint cannot be used (wrong model, wrong item count, corrupt)."""


class TrainingError(MMDiffError, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss)."""


class DeviceError(MMDiffError, RuntimeError):
    """The requested device is not available."""


class PerformanceWarning(UserWarning):
    """A setting runs, with correct results, but far slower than intended on
    this hardware (e.g. bfloat16 on a CPU without bfloat16 instructions)."""
