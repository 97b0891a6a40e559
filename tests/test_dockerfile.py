"""Static checks of the model server image (no Docker engine here to build it)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTEXT = REPO_ROOT / "services" / "model_server"  # the build context
DOCKERFILE = CONTEXT / "Dockerfile"
REQUIREMENTS = CONTEXT / "requirements.txt"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are removed by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """The parsed Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text())


def args_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    """The arguments of every instruction of one kind, in order."""
    return [arguments for kw, arguments in instructions if kw == keyword]


def test_parses_into_known_instructions_starting_with_from(
    instructions: list[tuple[str, str]],
) -> None:
    assert instructions, "empty Dockerfile"
    assert all(keyword in INSTRUCTIONS for keyword, _ in instructions), instructions
    assert next(kw for kw, _ in instructions if kw != "ARG") == "FROM"


def test_base_image_is_a_slim_python_pinned_to_an_exact_tag(
    instructions: list[tuple[str, str]],
) -> None:
    (base,) = args_of(instructions, "FROM")
    image = base.split()[0]
    assert "$" not in image, "the base image must not come from a build argument"
    match = re.fullmatch(r"python:(3\.(\d+)\.\d+)-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image)
    assert match, f"{image} is not python:<major.minor.patch>-slim[-<debian>]"
    assert match.group(2) in ("11", "12")


def test_runs_as_a_non_root_user(instructions: list[tuple[str, str]]) -> None:
    users = args_of(instructions, "USER")
    assert users, "no USER instruction: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The USER comes after every RUN, so nothing later runs as root again.
    last_user = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in instructions[last_user:])


def test_exposes_8080(instructions: list[tuple[str, str]]) -> None:
    ports = {
        p.split("/")[0] for arguments in args_of(instructions, "EXPOSE") for p in arguments.split()
    }
    assert "8080" in ports


def test_docker_run_image_serve_reaches_the_serve_command(
    instructions: list[tuple[str, str]],
) -> None:
    entrypoints = args_of(instructions, "ENTRYPOINT")
    commands = args_of(instructions, "CMD")
    # Exec form only, so the server is PID 1 and gets SIGTERM itself.
    if entrypoints:
        assert json.loads(entrypoints[-1])[0] == "serve"  # `docker run IMAGE serve` adds "serve"
    else:
        assert json.loads(commands[-1]) == ["serve"]  # replaced by `serve` when SageMaker runs it
    runs = " ".join(args_of(instructions, "RUN"))
    envs = " ".join(args_of(instructions, "ENV"))
    on_path = re.search(r"ln -s\S* \S*/serve /usr/(local/)?bin/serve", runs) or re.search(
        r"PATH=\S*model_server", envs
    )
    assert on_path, "`serve` is neither linked into /usr/local/bin nor its folder put on PATH"


def test_copied_sources_exist_in_the_build_context(instructions: list[tuple[str, str]]) -> None:
    for arguments in args_of(instructions, "COPY"):
        sources = [a for a in arguments.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (CONTEXT / source).exists(), f"COPY source {source} not in {CONTEXT}"


def test_serve_script_is_executable_and_runs_from_anywhere(tmp_path: Path) -> None:
    serve = CONTEXT / "serve"
    assert serve.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(serve, os.X_OK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(serve), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--model-dir" in result.stdout


def test_requirements_are_pinned_with_cpu_torch_and_cover_the_servers_imports() -> None:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    options = [line for line in lines if line.startswith("-")]
    requirements = [line for line in lines if line and not line.startswith("-")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options
    pins = {}
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        assert sep and version, f"{requirement} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    assert pins["torch"].endswith("+cpu")
    # Every third-party module the server imports is installed in the image.
    distributions = {"PIL": "pillow"}
    for source in CONTEXT.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                assert distributions.get(top, top) in pins, f"{source.name} imports {top}"
