"""What a URL needs beyond its pattern, checked where URLs are accepted (an ``http`` job's
payload, ``CLOUDTASK_SMTP_URL``)."""

from urllib.parse import urlsplit


def check_host_and_port(url: str) -> None:
    """Raise ``ValueError`` unless the URL names a host, and a port of 0 to 65535 if any: a URL
    without them fails the same way every time it is used. The message never repeats the URL,
    which may hold a password."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsed on access
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("has no host")
