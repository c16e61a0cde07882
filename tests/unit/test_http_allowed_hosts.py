"""Which URLs an ``http`` job may call, by ``HTTP_ALLOWED_HOSTS``: a host alone allows each of its
ports, ``host:port`` that port, which a URL without one reaches by its scheme's default."""

import pytest

from cloudtask.settings import Settings, SettingsError, load_settings
from cloudtask.worker.handlers.http import HttpHandler


def allows(entries: list[str], url: str) -> bool:
    return HttpHandler(Settings(_env_file=None, http_allowed_hosts=entries)).is_allowed(url)


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        (["api.example.com"], "https://api.example.com/v1"),
        (["api.example.com"], "http://API.example.com:8080/"),
        (["127.0.0.1:8000"], "http://127.0.0.1:8000/hook"),
        (["127.0.0.1:80"], "http://127.0.0.1/"),  # the port a URL without one connects to
        (["api.example.com:443"], "https://api.example.com/"),
        (["::1"], "http://[::1]:9000/"),
        (["[::1]"], "http://[::1]/"),
        (["[::1]:9000"], "http://[::1]:9000/"),
        (["[0:0:0:0:0:0:0:1]:9000"], "http://[::1]:9000/"),  # one address, two spellings
        (["other.example", "api.example.com:8443"], "https://api.example.com:8443/"),
        (["bücher.example"], "https://bücher.example/"),
        (["हिन्दी.example"], "https://हिन्दी.example/"),  # combining marks: a host all the same
        (["api_v2.internal"], "http://api_v2.internal/"),
    ],
)
def test_an_allowed_host_and_port_is_allowed(entries: list[str], url: str) -> None:
    assert allows(entries, url)


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        ([], "http://127.0.0.1/"),
        (["127.0.0.1:8000"], "http://127.0.0.1:8001/"),
        (["127.0.0.1:80"], "https://127.0.0.1/"),  # 443
        (["127.0.0.1:80"], "http://127.0.0.1:0/"),  # port 0 is a port of its own, not 80
        (["api.example.com"], "http://api.example.com.evil.example/"),
        (["api.example.com"], "http://api.example.com@evil.example/"),
        (["[::1]:9000"], "http://[::1]:9001/"),
        (["::1"], "http://[::2]/"),
    ],
)
def test_any_other_is_not(entries: list[str], url: str) -> None:
    assert not allows(entries, url)


@pytest.mark.parametrize(
    "value",
    [
        "http://api.example.com",
        "api.example.com/v1",
        "api.example.com:80x",
        "user@host",
        "[::1",
        "*",
        "*.example.com",
        "a.example.com b.example.com",
    ],
)
def test_an_entry_that_could_never_match_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CLOUDTASK_HTTP_ALLOWED_HOSTS", value)
    with pytest.raises(SettingsError, match=r"^CLOUDTASK_HTTP_ALLOWED_HOSTS: "):
        load_settings(env_file=None)


def test_ipv6_entries_with_a_port_are_read_from_a_comma_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDTASK_HTTP_ALLOWED_HOSTS", "[::1]:9000, api.example.com")
    assert load_settings(env_file=None).http_allowed_hosts == ["[::1]:9000", "api.example.com"]
