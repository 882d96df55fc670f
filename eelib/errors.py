"""eelib's errors: one small hierarchy, so that ``except eelib.EelibError`` catches every one of them.

Each also keeps the built-in base that says what kind of failure it is, so code that catches
``OSError`` (a model that cannot be read) or ``RuntimeError`` keeps working:

* `EelibError` — the root;
* `DownloadError` (also a ``RuntimeError``) — a file could not be downloaded or did not match its checksum;
* `ModelUnavailableError` (also an ``OSError``) — a model name that is neither a course model, a
  local folder, nor reachable on the Hub;
* `EnergyUnavailable` (also a ``RuntimeError``) — this machine offers no energy counter eelib can read.

Bad arguments are not errors of this kind: they raise ``ValueError`` or ``TypeError`` with a
message that names the argument and what is allowed.
"""


class EelibError(Exception):
    """The root of eelib's own errors."""


class DownloadError(EelibError, RuntimeError):
    """A file could not be downloaded or did not match its checksum."""


class ModelUnavailableError(EelibError, OSError):
    """A model name that is neither the course model, a local folder, nor reachable on the Hub."""


class EnergyUnavailable(EelibError, RuntimeError):
    """This machine offers no energy counter that eelib can read (the message says why)."""
