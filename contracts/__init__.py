"""The wire: every event, command, subject and stream Kiln's services share.

Services depend on this package, never on each other.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiln")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
