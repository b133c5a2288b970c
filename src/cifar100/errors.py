"""One small exception hierarchy; the CLI prints any of these as one line and exits 2."""


class CifarError(Exception):
    """Base of every error the tool reports to the user without a traceback."""


class ConfigError(CifarError):
    """A preset, config file or override is wrong."""


class DataError(CifarError):
    """A data source is missing, malformed or inconsistent."""


class ImageTooLarge(DataError):
    """An image with more pixels, or a file with more bytes, than may be decoded."""


class ChecksumError(DataError):
    """A file's digest differs from the published one."""


class DownloadError(DataError):
    """A download failed (network, server error, interruption)."""


class ModelError(CifarError):
    """A model or backbone cannot be built as asked."""


class CheckpointError(CifarError):
    """A checkpoint or run directory is missing, corrupt or of another kind."""


class TrainingError(CifarError):
    """Training cannot go on (e.g. the loss became NaN)."""


class WriteError(CifarError, OSError):
    """A file cannot be written: no space left, no permission, a read-only file system.

    Also an OSError, so that code which tolerates a failed write (a cache that cannot be
    saved) keeps tolerating it.
    """
