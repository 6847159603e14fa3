"""The errors the program reports to a person: each says what went wrong and what to do."""

from __future__ import annotations


class BootstrapError(Exception):
    """A failure with a message meant for the operator; the CLI prints it and exits non-zero."""

    exit_code = 1


class ConfigError(BootstrapError):
    """A configuration value is missing or invalid."""

    exit_code = 2


class FetchError(BootstrapError):
    """An archive could not be downloaded."""


class ChecksumError(FetchError):
    """A downloaded archive does not match its pinned size or MD5."""


class ArchiveError(BootstrapError):
    """An archive is malformed, unsafe, or does not hold what the dataset promises."""


class PackError(BootstrapError):
    """Packing could not finish, or too many images failed."""


class VerifyError(BootstrapError):
    """Packed output does not pass verification."""


class StorageError(BootstrapError):
    """The data directory cannot be written: full, read-only, or not ours. A person must fix it; not retried."""

    exit_code = 3


class DiskFullError(StorageError):
    """The output filesystem ran out of space."""


class BusyError(BootstrapError):
    """Another process is writing to the same data directory."""

    exit_code = 4


class SettingsChangedError(ConfigError):
    """What a finished (or half-done) stage made was made with other settings than these."""
