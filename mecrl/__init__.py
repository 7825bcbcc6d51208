"""mecrl: learn when and where to migrate edge services between MEC sites."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mecrl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
