"""What a URL needs beyond its pattern, checked where URLs are accepted (an ``http`` job's
payload, ``CLOUDTASK_SMTP_URL``), and how an ``http`` job's URL is matched against the hosts
allowed."""

import ipaddress
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def check_host_and_port(url: str) -> None:
    """Raise ``ValueError`` unless the URL names a host, and a port of 0 to 65535 if any: a URL
    without them fails the same way every time it is used. The message never repeats the URL,
    which may hold a password."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed bracket; a host NFKC normalization changes (its message
        # quotes the URL's user and password)
        raise ValueError("is not a URL") from None
    try:
        parts.port  # noqa: B018 - parsed on access
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("has no host")
    host_and_port = parts.netloc.rpartition("@")[2]
    if "[" in host_and_port or "]" in host_and_port:
        # urlsplit reads the host inside the brackets, and the port after the next colon, and
        # skips what lies around them (http://a[::1]x:80/), where the HTTP client refuses the
        # URL: the job failed at every attempt, as a connection error. Nor does any client take
        # a future address form ([v1.x]): an IPv6 address alone.
        before, _, rest = host_and_port.partition("[")
        address, _, after = rest.partition("]")
        if before or (after and not after.startswith(":")) or not _is_ipv6(address):
            raise ValueError("has a host in brackets that is not one IPv6 address and its port")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def allowed_host(entry: str) -> tuple[str, int | None]:
    """An entry of ``HTTP_ALLOWED_HOSTS`` as (host, port): ``host`` (any port), ``host:port``,
    an IPv6 address bare or in brackets, ``[address]:port``. Raise ``ValueError`` for anything
    else (a URL, a path): such an entry would never match, and the jobs it was meant for fail."""
    text = entry.strip().lower()
    if text.count(":") > 1 and not text.startswith("["):  # an IPv6 address without a port
        try:
            return str(ipaddress.IPv6Address(text)), None
        except ValueError:
            raise ValueError(f"{entry!r} is not a host, host:port or [IPv6]:port") from None
    try:
        parts = urlsplit("//" + text)
    except ValueError:  # an unclosed bracket
        raise ValueError(f"{entry!r} is not a host, host:port or [IPv6]:port") from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r} has a port that is not a number from 0 to 65535") from None
    if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{entry!r} is not a host, host:port or [IPv6]:port")
    host = _canonical(parts.hostname)
    if any(char.isspace() or char in "*?" for char in host):
        # "*" or "a.com b.com" (a space for a comma) is no host a URL could name.
        raise ValueError(f"{entry!r} is not a host, host:port or [IPv6]:port (no wildcards)")
    return host, port


def url_host(url: str) -> tuple[str, int]:
    """The host of an ``http``/``https`` URL (checked by ``HttpPayload``), and the port it
    connects to: its own, or its scheme's default."""
    parts = urlsplit(url)
    port = parts.port
    return _canonical(parts.hostname or ""), (
        DEFAULT_PORTS[parts.scheme.lower()] if port is None else port
    )


def _canonical(host: str) -> str:
    # An IPv6 address has several spellings (::1, 0:0:0:0:0:0:0:1): compared in one.
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return host.lower()
