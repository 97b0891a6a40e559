"""The one settings table: README in step with it, every knob read where the table says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scones import settings
from scones.settings import KNOBS, REPO_ROOT, Settings, SettingsError, readme_table, variable_of


def _readme_knob_table() -> str:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    start = lines.index("| variable | default | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[start:end])


def test_readme_table_is_generated_from_the_knobs() -> None:
    assert _readme_knob_table() == readme_table(), (
        "README's configuration table differs from scones/settings.py's KNOBS: "
        "regenerate it with `python -m scones.settings`"
    )


def test_every_settings_field_is_one_knob_and_every_own_knob_a_field() -> None:
    fields = Settings.__dataclass_fields__
    variables = {name: variable_of(name) for name in fields}
    own = {k.variable for k in KNOBS if k.read_by == "scones/settings.py"}
    assert sorted(variables.values()) == sorted(own)
    assert len({k.variable for k in KNOBS}) == len(KNOBS), "a knob is listed twice"


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.read_by != "scones/settings.py"])
def test_knobs_read_elsewhere_are_read_there(knob: settings.Knob) -> None:
    where = REPO_ROOT / knob.read_by
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where]
    assert any(knob.variable in path.read_text() for path in files), (
        f"{knob.variable} is documented as read by {knob.read_by}, which never names it"
    )


def _environment_reads(path: Path) -> list[str]:
    """`os.environ.get(...)`, `os.environ[...]` and `os.getenv(...)` reads of a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target in ("os.environ.get", "os.getenv"):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) == "os.environ"
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_the_application_reads_configuration_only_through_settings() -> None:
    modules = [p for p in (REPO_ROOT / "scones").rglob("*.py") if p.name != "settings.py"]
    # scones.testing saves and restores os.environ around a selected profile: not configuration.
    reads = [r for p in modules if p.name != "testing.py" for r in _environment_reads(p)]
    assert reads == []


def test_settings_read_the_environment_and_refuse_a_malformed_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = {
        "SCONES_THRESHOLD": "0.5",
        "SCONES_EPOCHS": "3",
        "SCONES_STATE_DIR": "/tmp/elsewhere",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    loaded = settings.load()
    assert (loaded.threshold, loaded.epochs, loaded.state_dir) == (0.5, 3, Path("/tmp/elsewhere"))
    monkeypatch.delenv("SCONES_STATE_DIR")
    assert settings.load().state_dir == REPO_ROOT / ".state"
    monkeypatch.setenv("SCONES_EPOCHS", "three")
    with pytest.raises(SettingsError, match="SCONES_EPOCHS must be a whole number, got 'three'"):
        settings.load()
