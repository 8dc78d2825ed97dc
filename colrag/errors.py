"""Expected failures. The CLI prints these as one line on stderr and exits non-zero;
anything else is a bug and keeps its traceback (shown with COLRAG_DEBUG=1)."""


class ColragError(Exception):
    """A failure the user can act on; the message says what to do."""

    exit_code = 1


class BundleError(ColragError):
    """A model bundle is missing, incomplete, tampered with or of an unknown format."""


class IndexStoreError(ColragError):
    """An index folder is missing, locked, corrupt or built with another model."""


class InputError(ColragError):
    """A PDF, image or argument that colrag cannot use."""

    exit_code = 2
