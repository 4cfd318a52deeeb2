"""trailseal: tamper-evident audit trails, an open self-hosted CloudTrail."""

from trailseal._core import __version__
from trailseal.errors import (
    ConfigError,
    DeliveryError,
    IntegrityError,
    ProtocolError,
    RejectedEventsError,
    TrailsealError,
)

__all__ = [
    "ConfigError",
    "DeliveryError",
    "IntegrityError",
    "ProtocolError",
    "RejectedEventsError",
    "TrailsealError",
    "__version__",
]
