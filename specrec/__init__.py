"""specrec: keep a generative recommender fresh and cheap to serve."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specrec")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"
