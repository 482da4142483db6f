"""Errors a user can act on: each says what was wrong, with the value, and what to do."""


class SpecrecError(Exception):
    """Base class for errors shown to the user as a message, never as a traceback."""


class ConfigError(SpecrecError):
    """A value in params.yaml is missing, unknown or out of range."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}.")


class DataError(SpecrecError):
    """Input data cannot be read or fails validation beyond the configured tolerance."""


class DownloadError(SpecrecError):
    """A dataset archive could not be fetched or failed its checksum."""


class StoreUnreachable(SpecrecError):
    """A server the production profile points at does not accept connections (transient for flows: their
    tasks retry it; a command prints it and exits instead of hanging in a client's own retries)."""
