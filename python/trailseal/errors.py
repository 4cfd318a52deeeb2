"""The exceptions users catch: one root, one subclass per kind of failure."""


class TrailsealError(Exception):
    """Root of every error trailseal raises on purpose."""


class ConfigError(TrailsealError):
    """A configuration file, key or value is wrong; the message names the file and the key."""


class ProtocolError(TrailsealError):
    """A peer spoke the ingest protocol wrongly, or the connection broke."""


class DeliveryError(TrailsealError):
    """A sealed file or digest could not be delivered to its destination."""


class IntegrityError(TrailsealError):
    """Something delivered does not match what was sealed or signed."""


class RejectedEventsError(TrailsealError):
    """The daemon rejected one or more lines that were sent."""
