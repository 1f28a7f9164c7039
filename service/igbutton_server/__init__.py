"""igbutton server: a gRPC gateway for Instagram button templates and their postbacks."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The installed distribution's version, which its build read from VERSION.
    __version__ = version("igbutton-server")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["__version__"]
