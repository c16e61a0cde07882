"""``--import``: a handler module that fails as it is imported is refused in one line saying what
failed and where, in the module's own code (the one-line printing is ``main``'s, tested with the
commands in tests/e2e/test_cli.py)."""

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtask.cli import import_handler_modules
from cloudtask.settings import SettingsError


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory of handler modules, the working directory (``--import`` looks there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _refusal(module: str) -> str:
    with pytest.raises(SettingsError) as refused:
        import_handler_modules([module])
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("source", "says", "line"),
    [
        ("def handle(payload)\n", "SyntaxError: ", 1),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config (", 1),
        # Failing in the standard library: where in the module, all the same.
        ("import os\nos.environ['BROKENJOBS_MISSING']\n", "KeyError: 'BROKENJOBS_MISSING' (", 2),
        ("raise RuntimeError('first\\nsecond')\n", "RuntimeError: first … (", 1),
        ("raise RuntimeError()\n", "RuntimeError: (no message) (", 1),
    ],
)
def test_a_module_that_fails_as_it_is_imported_is_refused_saying_what_and_where(
    modules: Path, source: str, says: str, line: int
) -> None:
    name = f"brokenjobs_{secrets.token_hex(4)}"
    (modules / f"{name}.py").write_text(source)
    message = _refusal(name)
    assert message.startswith(f"--import {name}: {says}")
    assert message.endswith(f"{name}.py, line {line})")


def test_a_package_failing_in_a_library_points_at_its_own_line(modules: Path) -> None:
    name = f"brokenpkg_{secrets.token_hex(4)}"
    package = modules / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text("import os\n\nTOKEN = os.environ['BROKENPKG_TOKEN']\n")
    (package / "jobs.py").write_text(f"from {name} import settings  # noqa\n")
    message = _refusal(f"{name}.jobs")
    assert message.startswith(f"--import {name}.jobs: KeyError: 'BROKENPKG_TOKEN' (")
    assert message.endswith(f"{package / 'settings.py'}, line 3)")


def test_an_import_error_with_a_message_of_several_lines_is_one_line(modules: Path) -> None:
    name = f"brokenimport_{secrets.token_hex(4)}"
    (modules / f"{name}.py").write_text("raise ImportError('line one\\nline two')\n")
    assert _refusal(name) == f"--import {name}: line one …"
