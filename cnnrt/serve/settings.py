"""The server's defaults, apart from the server itself so that `cnnrt --help` imports nothing heavy."""

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
