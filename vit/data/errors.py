"""The one error type for a dataset that cannot be used as the spec asks."""


class DataError(ValueError):
    """A malformed or missing dataset; the message names the problem and, where it can, the fix."""
