"""The compose target (`make up BACKEND=docker`): what is checkable without a Docker engine, and
the integration test that runs against Compose where an engine answers.

Without an engine: docker-compose.yml validates against the Compose specification, images are
pinned to exact versions (LocalStack to 4.14.0), every service has a healthcheck, ports publish
on 127.0.0.1 only, the wiring between LocalStack, its Lambda containers and sagemaker-local is
consistent, .env.example lists every variable with its default, and the Dockerfiles parse, start
from a pinned image and run as a non-root user.

tests/data/compose-spec.json is the Compose specification's JSON schema, vendored unchanged from
compose-spec/compose-spec, schema/compose-spec.json, commit 00655e2222608fa6eaecdf12ac5195889ca2244a
(sha256 bc50c2d79102aed8df21b3a13e56c9396c7a06da6cff5ce37629f2ee7eb41735).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
import yaml

from scones.stack import health, start_service
from services.local_aws.profile import REGION, write_profile
from services.localstack_host.host import SERVICES as LOCALSTACK_HOST_SERVICES
from tests.conftest import LocalAws, free_port, stop_process, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
LOCK_FILE = REPO_ROOT / "requirements.lock"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
SAGEMAKER_LOCAL_DOCKERFILE = REPO_ROOT / "services" / "sagemaker_local" / "Dockerfile"
MODEL_SERVER_DOCKERFILE = REPO_ROOT / "services" / "model_server" / "Dockerfile"
LOCALSTACK_IMAGE = "localstack/localstack:4.14.0"
# One list for both LocalStack paths: the compose file must name what host mode starts.
LOCALSTACK_SERVICES = set(LOCALSTACK_HOST_SERVICES)
LOCAL_ONLY = "127.0.0.1"
DUMMY_CREDENTIAL = "test"

# ---------------------------------------------------------------------------------------------
# Compose file helpers: variable interpolation as Compose does it, image references, ports.

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (`${NAME:?message}`) is unset."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?e}`, `$$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        operator = match.group("operator") or ""
        argument = match.group("argument") or ""
        value = env.get(name)
        # With a colon, an empty value counts as unset.
        unset = value is None or (value == "" and operator.startswith(":"))
        if operator.endswith("-"):
            return argument if unset else str(value)
        if operator.endswith("?"):
            if unset:
                raise InterpolationError(f"{name}: {argument or 'required'}")
            return str(value)
        if operator.endswith("+"):
            return "" if unset else argument
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate_values(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not mapping keys) of a loaded YAML document."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_values(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_values(value, env) for value in node]
    return node


def compose_variables(text: str) -> dict[str, str | None]:
    """Each `${NAME...}` the compose text uses, with its `:-` default (None when it has none)."""
    variables: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(text):
        name = match.group("braced") or match.group("bare")
        if name:
            default = match.group("argument") if match.group("operator") == ":-" else None
            variables[name] = default
    return variables


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a dotenv file; blank lines and `#` comments skipped."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, separator, value = stripped.partition("=")
        assert separator, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        values[name.strip()] = value.strip()
    return values


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml, interpolated with `env` (no variables set: every default)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(interpolate_values(document, env or {}))


_EXACT_VERSION_TAG = re.compile(r"v?\d+\.\d+\.\d+(?:[-_.+][0-9A-Za-z][0-9A-Za-z_.+-]*)?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def split_image_reference(reference: str) -> tuple[str, str | None, str | None]:
    """`name[:tag][@digest]` -> (name, tag, digest); a registry's `host:port/` is not a tag."""
    name, _, digest = reference.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def is_pinned_image(reference: str) -> bool:
    """Whether an image reference names one exact version: a full X.Y.Z tag, or a digest."""
    _, tag, digest = split_image_reference(reference)
    if digest is not None:
        return _DIGEST.fullmatch(digest) is not None
    return tag is not None and _EXACT_VERSION_TAG.fullmatch(tag) is not None


def published_host_ip(port: Any) -> str | None:
    """The host address a `ports` entry publishes on; None means every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).split("/", 1)[0].split(":")
    return parts[0] if len(parts) == 3 else None


def container_port(port: Any) -> int:
    """The container side of a `ports` entry."""
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).split("/", 1)[0].split(":")[-1])


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either the mapping or the list form."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def volume_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's mounts as {container path: source}."""
    targets = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets[volume["target"]] = volume.get("source", "")
        else:
            source, _, rest = str(volume).partition(":")
            targets[rest.split(":", 1)[0]] = source
    return targets


def docker_flag_env(flags: str) -> dict[str, str]:
    """The `-e NAME=value` pairs of a Docker command-line flag string."""
    tokens = shlex.split(flags)
    env = {}
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-e", "--env"):
            name, _, setting = value.partition("=")
            env[name] = setting
    return env


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing: instructions with continuations, comments and the escape directive.

DOCKERFILE_KEYWORDS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


class DockerfileError(ValueError):
    """A Dockerfile that does not parse."""


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuations joined."""

    keyword: str
    arguments: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions as BuildKit reads them (heredocs aside)."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives: only leading `# name=value` comments
        directive = re.fullmatch(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", line)
        if directive is None:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    instructions: list[Instruction] = []
    pieces: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#") or (pieces and not stripped):
            continue  # comments, also inside a continuation, and empty continuation lines
        if not stripped:
            continue
        if not pieces:
            start = number
        if line.rstrip().endswith(escape):
            pieces.append(line.rstrip()[: -len(escape)])
            continue
        pieces.append(line)
        keyword, _, arguments = "".join(pieces).strip().partition(" ")
        pieces = []
        if keyword.upper() not in DOCKERFILE_KEYWORDS:
            raise DockerfileError(f"line {start}: unknown instruction {keyword!r}")
        if not arguments.strip():
            raise DockerfileError(f"line {start}: {keyword.upper()} without arguments")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    if pieces:
        raise DockerfileError(f"line {start}: the file ends inside a line continuation")
    if not instructions:
        raise DockerfileError("no instructions")
    return instructions


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (those FROM may use)."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            defaults[name.strip()] = default.strip().strip('"')
    return defaults


def base_images(instructions: list[Instruction]) -> list[str]:
    """The external images of every FROM (earlier stage names and `scratch` left out)."""
    args = build_args(instructions)
    stages: set[str] = set()
    images = []
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        words = [word for word in instruction.arguments.split() if not word.startswith("--")]
        image = interpolate(words[0], args)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() not in stages and image != "scratch":
            images.append(image)
    return images


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage, the one the image runs."""
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT; fails on the shell form."""
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"{instruction.keyword} is not in exec (JSON array) form"
    return [str(part) for part in value]


def pip_requirements(instructions: list[Instruction]) -> list[str]:
    """Requirement arguments of every `pip install` in RUN instructions (options left out)."""
    options_with_value = {
        "-c",
        "--constraint",
        "-r",
        "--requirement",
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "-t",
        "--target",
    }
    requirements = []
    for instruction in instructions:
        if instruction.keyword != "RUN":
            continue
        tokens = shlex.split(instruction.arguments)
        commands: list[list[str]] = [[]]
        for token in tokens:
            if token in ("&&", "||", ";"):
                commands.append([])
            else:
                commands[-1].append(token)
        for command in commands:
            words = command[2:] if command[:2] == ["python", "-m"] else command
            if words[:2] not in (["pip", "install"], ["pip3", "install"]):
                continue
            skip_next = False
            for word in words[2:]:
                if skip_next:
                    skip_next = False
                elif word in options_with_value:
                    skip_next = True
                elif not word.startswith("-"):
                    requirements.append(word)
    return requirements


def read_lock(path: Path) -> dict[str, str]:
    """requirements.lock as {normalised name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        # `name==version \` followed by `--hash=sha256:...` lines (installed --require-hashes).
        name, separator, version = line.strip().partition("==")
        if separator and not name.startswith("-"):
            pins[normalise(name)] = version.split()[0]
    return pins


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# The compose file, statically.


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with every variable at its default."""
    return load_compose()


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for document in (
        yaml.safe_load(COMPOSE_FILE.read_text()),
        load_compose(),
        load_compose(read_env_file(ENV_EXAMPLE)),
    ):
        errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
        assert not errors, "\n".join(
            f"{'/'.join(map(str, error.path))}: {error.message}" for error in errors
        )


def test_the_schema_rejects_what_compose_rejects() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    document = load_compose()
    document["services"]["localstack"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(document)
    document = load_compose()
    document["services"]["sagemaker-local"]["depends_on"]["localstack"]["condition"] = "healthy"
    assert not validator.is_valid(document)


@pytest.mark.parametrize(
    ("reference", "pinned"),
    [
        ("localstack/localstack:4.14.0", True),
        ("python:3.11.13-slim-bookworm", True),
        ("registry.example:5000/team/image:1.2.3", True),
        ("python@sha256:" + "a" * 64, True),
        ("localstack/localstack", False),
        ("localstack/localstack:latest", False),
        ("localstack/localstack:4", False),
        ("localstack/localstack:4.14", False),
        ("python:3.11-slim", False),
        ("python:slim", False),
        ("registry.example:5000/team/image", False),
        ("python@sha256:abc", False),
    ],
)
def test_pin_rule(reference: str, pinned: bool) -> None:
    assert is_pinned_image(reference) is pinned


@pytest.mark.parametrize("env_source", ["defaults", ".env.example"])
def test_every_image_is_pinned_and_localstack_is_4_14_0(env_source: str) -> None:
    env = read_env_file(ENV_EXAMPLE) if env_source == ".env.example" else {}
    services = load_compose(env)["services"]
    assert services["localstack"]["image"] == LOCALSTACK_IMAGE
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "image" in service:
            assert is_pinned_image(service["image"]), f"{name}: {service['image']} is not pinned"
        if "build" in service:
            assert "image" in service, f"{name}: a built image needs a pinned `image:` name"


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check["test"]
        assert test and (isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL")), name
    localstack_check = " ".join(compose["services"]["localstack"]["healthcheck"]["test"])
    assert "http://localhost:4566/_localstack/health" in localstack_check
    sagemaker_check = " ".join(compose["services"]["sagemaker-local"]["healthcheck"]["test"])
    assert "http://127.0.0.1:4570/_health" in sagemaker_check


@pytest.mark.parametrize(
    ("port", "host_ip"),
    [
        ("127.0.0.1:4566:4566", "127.0.0.1"),
        ("4566:4566", None),
        ("4566", None),
        (4566, None),
        ("0.0.0.0:4566:4566/tcp", "0.0.0.0"),
        ({"target": 4566, "published": 4566, "host_ip": "127.0.0.1"}, "127.0.0.1"),
        ({"target": 4566, "published": 4566}, None),
    ],
)
def test_port_rule(port: Any, host_ip: str | None) -> None:
    assert published_host_ip(port) == host_ip


@pytest.mark.parametrize("env_source", ["defaults", ".env.example"])
def test_published_ports_bind_loopback_only(env_source: str) -> None:
    env = read_env_file(ENV_EXAMPLE) if env_source == ".env.example" else {}
    services = load_compose(env)["services"]
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name}: host networking"
        for port in service.get("ports", []):
            published += 1
            assert published_host_ip(port) == LOCAL_ONLY, f"{name}: {port} is not on {LOCAL_ONLY}"
    assert published == 2


def test_localstack_runs_the_needed_services_and_lambdas_reach_sagemaker_local(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    localstack = environment_of(services["localstack"])
    assert set(localstack["SERVICES"].split(",")) == LOCALSTACK_SERVICES
    assert volume_targets(services["localstack"])["/var/run/docker.sock"] == "/var/run/docker.sock"
    network_name = compose["networks"]["scones"]["name"]
    assert localstack["LAMBDA_DOCKER_NETWORK"] == network_name
    for name, service in services.items():
        assert service["networks"] == ["scones"], f"{name} is not on the shared network"
    sagemaker_port = container_port(services["sagemaker-local"]["ports"][0])
    lambda_env = docker_flag_env(localstack["LAMBDA_DOCKER_FLAGS"])
    assert lambda_env == {
        "AWS_ENDPOINT_URL_SAGEMAKER": f"http://sagemaker-local:{sagemaker_port}",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://sagemaker-local:{sagemaker_port}",
    }
    assert int(localstack["LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT"]) >= 20


def test_sagemaker_local_reaches_s3_through_localstack(compose: dict[str, Any]) -> None:
    service = compose["services"]["sagemaker-local"]
    env = environment_of(service)
    localstack_port = container_port(compose["services"]["localstack"]["ports"][0])
    assert env["AWS_ENDPOINT_URL"] == f"http://localstack:{localstack_port}"
    assert env["AWS_DEFAULT_REGION"] == REGION  # the `local` profile's region
    assert service["depends_on"] == {"localstack": {"condition": "service_healthy"}}
    assert service["build"] == {"context": ".", "dockerfile": "services/sagemaker_local/Dockerfile"}
    assert (REPO_ROOT / service["build"]["dockerfile"]).is_file()


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    services = compose["services"]
    assert volume_targets(services["localstack"])["/var/lib/localstack"] in declared
    command = exec_form(_cmd(SAGEMAKER_LOCAL_DOCKERFILE))
    state_dir = command[command.index("--state-dir") + 1]
    assert volume_targets(services["sagemaker-local"])[state_dir] in declared


def test_no_secrets_only_the_dummy_credentials(compose: dict[str, Any]) -> None:
    assert "secrets" not in compose
    secretive = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|API_KEY", re.IGNORECASE)
    for name, service in compose["services"].items():
        for key, value in environment_of(service).items():
            if secretive.search(key):
                assert value == DUMMY_CREDENTIAL, f"{name}: {key} is not the dummy `test`"
    for key, value in read_env_file(ENV_EXAMPLE).items():
        assert not secretive.search(key), f".env.example holds a credential-like {key}"
        assert not re.search(r"AKIA[0-9A-Z]{16}", value), f".env.example: {key} looks like a key"


def test_env_example_lists_every_variable_with_its_default() -> None:
    variables = compose_variables(COMPOSE_FILE.read_text())
    assert all(default is not None for default in variables.values()), (
        f"variables without a `:-` default: {[n for n, d in variables.items() if d is None]}"
    )
    assert read_env_file(ENV_EXAMPLE) == variables


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "y"}, "y"),
        ("127.0.0.1:${P:-4566}:4566", {"P": "5000"}, "127.0.0.1:5000:4566"),
        ("$$HOME and $A", {"A": "a"}, "$HOME and a"),
        ("${A:+set}", {"A": "1"}, "set"),
    ],
)
def test_interpolation(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolation_of_a_required_variable() -> None:
    with pytest.raises(InterpolationError, match="TOKEN: needed"):
        interpolate("${TOKEN:?needed}", {})


def _compose_cli_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        detail = (version.stderr or version.stdout).strip().splitlines()
        return (
            "the docker client has no compose plugin (`docker compose version`: "
            f"{detail[0] if detail else f'exit {version.returncode}'})"
        )
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    missing = _compose_cli_missing()
    if missing:
        pytest.skip(f"`docker compose config` not run: {missing}")
    for extra in ([], ["--env-file", str(ENV_EXAMPLE)]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), *extra, "config", "--quiet"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# The Dockerfiles.

DOCKERFILES = {
    "sagemaker_local": SAGEMAKER_LOCAL_DOCKERFILE,
    "model_server": MODEL_SERVER_DOCKERFILE,
}


def _dockerfile(name: str) -> list[Instruction]:
    path = DOCKERFILES[name]
    if name == "model_server" and not path.exists():
        pytest.skip(f"{path.relative_to(REPO_ROOT)} is not written yet (the model-server image)")
    return parse_dockerfile(path.read_text())


def _cmd(path: Path) -> Instruction:
    return [ins for ins in parse_dockerfile(path.read_text()) if ins.keyword == "CMD"][-1]


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11.13-slim-bookworm\n"
        "FROM ${BASE} AS build\n"
        "RUN pip install \\\n"
        "# a comment inside the continuation\n"
        "        a==1.0.0 \\\n"
        "\n"
        "        b==2.0.0\n"
        "FROM build\n"
        "USER 10001:10001\n"
        'CMD ["serve"]\n'
    )
    instructions = parse_dockerfile(text)
    assert [(ins.keyword, ins.line) for ins in instructions] == [
        ("ARG", 2),
        ("FROM", 3),
        ("RUN", 4),
        ("FROM", 9),
        ("USER", 10),
        ("CMD", 11),
    ]
    assert instructions[2].arguments.split() == ["pip", "install", "a==1.0.0", "b==2.0.0"]
    assert base_images(instructions) == ["python:3.11.13-slim-bookworm"]
    assert pip_requirements(instructions) == ["a==1.0.0", "b==2.0.0"]
    assert exec_form(instructions[-1]) == ["serve"]


def test_dockerfile_parser_honours_the_escape_directive() -> None:
    instructions = parse_dockerfile("# escape=`\nFROM scratch\nCOPY a `\n    b /\n")
    assert instructions[-1] == Instruction("COPY", "a     b /", 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM python:3.11.13-slim\nRUN echo \\\n", "ends inside a line continuation"),
        ("FORM python:3.11.13-slim\n", "unknown instruction 'FORM'"),
        ("FROM python:3.11.13-slim\nUSER\n", "USER without arguments"),
        ("# only a comment\n", "no instructions"),
    ],
)
def test_dockerfile_parser_rejects_broken_files(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse_dockerfile(text)


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_parses_and_starts_from_a_pinned_image(name: str) -> None:
    instructions = _dockerfile(name)
    first = next(ins for ins in instructions if ins.keyword != "ARG")
    assert first.keyword == "FROM", f"{name}: first instruction is {first.keyword}"
    images = base_images(instructions)
    assert images, f"{name}: no base image"
    for image in images:
        assert is_pinned_image(image), f"{name}: FROM {image} is not pinned to an exact version"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_runs_as_a_non_root_user(name: str) -> None:
    users = [ins.arguments for ins in final_stage(_dockerfile(name)) if ins.keyword == "USER"]
    assert users, f"{name}: no USER in the final stage, so it runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0"), f"{name}: USER {users[-1]} is root"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_pins_match_the_lock_file(name: str) -> None:
    lock = read_lock(LOCK_FILE)
    for requirement in pip_requirements(_dockerfile(name)):
        package, separator, version = requirement.partition("==")
        assert separator and version, f"{name}: {requirement} is not pinned with =="
        if normalise(package) in ("pip", "setuptools", "wheel"):
            continue  # installer tooling, not in a pip freeze
        locked = lock.get(normalise(package))
        assert locked is not None, f"{name}: {package} is not in requirements.lock"
        # A local version label (`+cpu`) names a build of the locked version.
        assert version.split("+", 1)[0] == locked, f"{name}: {requirement}, lock has {locked}"


def test_sagemaker_local_image_serves_what_compose_publishes(compose: dict[str, Any]) -> None:
    instructions = parse_dockerfile(SAGEMAKER_LOCAL_DOCKERFILE.read_text())
    command = exec_form(_cmd(SAGEMAKER_LOCAL_DOCKERFILE))
    assert command[:3] == ["python", "-m", "services.sagemaker_local"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options["--host"] == "0.0.0.0"
    port = int(options["--port"])
    service = compose["services"]["sagemaker-local"]
    assert container_port(service["ports"][0]) == port
    exposed = {ins.arguments for ins in instructions if ins.keyword == "EXPOSE"}
    assert exposed == {str(port)}
    copied = {ins.arguments.split()[0] for ins in instructions if ins.keyword == "COPY"}
    assert {"services/", "model/"} <= copied
    requirements = {normalise(r.partition("==")[0]) for r in pip_requirements(instructions)}
    assert {"torch", "boto3", "uvicorn", "aiohttp", "numpy"} <= requirements


# ---------------------------------------------------------------------------------------------
# Integration, parameterised over the backend: the same `local` profile reaches S3 and
# sagemaker-local, whether they run embedded or in Compose.


@dataclass(frozen=True)
class Stack:
    """A running local stack: where the `local` profile must send AWS and SageMaker calls."""

    backend: str
    aws_endpoint: str
    sagemaker_endpoint: str


def http_ok(url: str) -> bool:
    """Whether GET url answers 200."""
    return health(url) is not None


def docker_unavailable() -> str | None:
    """Why the compose backend cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if info.returncode != 0:
        lines = [line for line in (info.stderr or info.stdout).splitlines() if line.strip()]
        return f"no Docker engine answers `docker info` ({lines[-1] if lines else 'no output'})"
    return _compose_cli_missing()


@pytest.fixture(scope="session")
def compose_test_env() -> dict[str, str]:
    """Ports and network of the test stack, apart from a `make up BACKEND=docker` one."""
    return {
        "LOCALSTACK_PORT": str(free_port()),
        "SAGEMAKER_LOCAL_PORT": str(free_port()),
        "SCONES_DOCKER_NETWORK": f"scones-test-{os.getpid()}",
    }


@pytest.fixture(scope="session")
def docker_compose_command(compose_test_env: dict[str, str]) -> str:
    """pytest-docker: `docker compose`, with the test stack's variables on every call."""
    settings = " ".join(f"{name}={shlex.quote(value)}" for name, value in compose_test_env.items())
    return f"env {settings} docker compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """pytest-docker: the project's compose file, the one `make up BACKEND=docker` runs."""
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def compose_stack(request: pytest.FixtureRequest) -> Stack:
    """The compose stack, up and healthy (pytest-docker: `up --build --wait`, then `down -v`)."""
    reason = docker_unavailable()
    if reason:
        # Decided before pytest-docker's fixtures are requested: without an engine they fail.
        pytest.skip(f"BACKEND=docker: {reason}")
    services = request.getfixturevalue("docker_services")
    stack = Stack(
        "docker",
        f"http://{LOCAL_ONLY}:{services.port_for('localstack', 4566)}",
        f"http://{LOCAL_ONLY}:{services.port_for('sagemaker-local', 4570)}",
    )
    services.wait_until_responsive(
        lambda: (
            http_ok(f"{stack.aws_endpoint}/_localstack/health")
            and http_ok(f"{stack.sagemaker_endpoint}/_health")
        ),
        timeout=120.0,
        pause=0.5,
    )
    return stack


@pytest.fixture(scope="module")
def embedded_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The embedded emulator (shared `local_aws`) and a sagemaker-local process beside it."""
    local_aws: LocalAws = request.getfixturevalue("local_aws")
    state_dir = tmp_path_factory.mktemp("sagemaker_local")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_ENDPOINT_URL")
        and name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    env.update(write_profile(state_dir / "aws", local_aws.endpoint_url))
    port = free_port()
    log_path = state_dir / "sagemaker_local.log"
    args = ["--port", str(port), "--state-dir", str(state_dir / "state")]
    process = start_service("services.sagemaker_local", args, log_path, env)
    try:
        wait_until_ready(f"http://{LOCAL_ONLY}:{port}/_health", process, log_path)
        yield Stack("embedded", local_aws.endpoint_url, f"http://{LOCAL_ONLY}:{port}")
    finally:
        stop_process(process)


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("docker", marks=pytest.mark.docker)]
)
def backend(request: pytest.FixtureRequest) -> Stack:
    """Each backend in turn; the docker one is skipped, with the reason, without an engine."""
    fixture = "compose_stack" if request.param == "docker" else "embedded_stack"
    stack: Stack = request.getfixturevalue(fixture)
    return stack


@pytest.mark.timeout(1800)  # the first compose run builds the image and pulls LocalStack
def test_local_profile_reaches_s3_and_sagemaker_local(
    backend: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        ):
            monkeypatch.delenv(name)
    # The profile `make up` writes, and nothing else: no endpoint_url anywhere in the calls.
    profile = write_profile(tmp_path / "aws", backend.aws_endpoint, backend.sagemaker_endpoint)
    for name, value in profile.items():
        monkeypatch.setenv(name, value)
    session = boto3.session.Session()  # a fresh session reads the profile just written

    assert session.client("sts").get_caller_identity()["Account"]
    s3 = session.client("s3")
    bucket = f"compose-check-{uuid.uuid4().hex[:12]}"
    body = os.urandom(2048)
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="round/trip.bin", Body=body)
        assert s3.get_object(Bucket=bucket, Key="round/trip.bin")["Body"].read() == body
    finally:
        s3.delete_object(Bucket=bucket, Key="round/trip.bin")
        s3.delete_bucket(Bucket=bucket)

    sagemaker = session.client("sagemaker")
    assert sagemaker.meta.endpoint_url == backend.sagemaker_endpoint
    assert session.client("sagemaker-runtime").meta.endpoint_url == backend.sagemaker_endpoint
    assert http_ok(f"{sagemaker.meta.endpoint_url}/_health")
    assert isinstance(sagemaker.list_endpoints()["Endpoints"], list)
