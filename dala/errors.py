"""User-facing errors. Each message names the problem and the fix; the CLI prints it as one line
(exit 2) and the app shows it in a box, and neither shows a traceback for these."""


class DalaError(Exception):
    """Base of every error a user can cause and fix (bad folder, file, argument, checkpoint...)."""


class DataError(DalaError):
    """A dataset root, image, index or split is missing or malformed."""


class SplitLeakError(DataError):
    """A split puts one patient on both sides."""


class CheckpointError(DalaError):
    """A checkpoint is missing, truncated, for another architecture, or not safetensors."""


class ImageInputError(DalaError):
    """An uploaded or given image cannot be used (not an image, truncated, too large, odd mode)."""


class HubError(DalaError):
    """A Hub repo or file cannot be had (offline, missing, not allowed)."""


class RunError(DalaError):
    """A training run folder or configuration is invalid."""


class CLIError(DalaError):
    """A bad command-line argument: printed as one clear line, exit status 2, no traceback."""
