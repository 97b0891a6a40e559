"""moto's per-request lookups, cached, answer as the uncached ones do."""

from __future__ import annotations

import pytest
from flask import Flask, request
from flask.debughelpers import DebugFilesKeyError

from services.local_aws import moto_dispatch


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    moto_dispatch.install()


def test_a_form_field_read_as_a_file_still_gets_flasks_debug_error() -> None:
    app = Flask("debug-files")
    app.debug = True
    for _ in range(2):  # the second request reuses the class the first one built
        with app.test_request_context("/", method="POST", data={"upload": "not a file"}):
            request.get_data(parse_form_data=True)
            with pytest.raises(DebugFilesKeyError):
                request.files["upload"]
            with pytest.raises(KeyError) as missing:
                request.files["absent"]
            assert not isinstance(missing.value, DebugFilesKeyError)


def test_method_names_follow_a_method_patched_in_later() -> None:
    from moto.core import responses

    class Response:
        def describe_thing(self) -> None: ...

    assert "describe_thing" in responses.method_names_from_class(Response)
    assert "list_things" not in responses.method_names_from_class(Response)
    Response.list_things = lambda self: None  # type: ignore[attr-defined]
    assert "list_things" in responses.method_names_from_class(Response)


def test_the_backend_for_a_host_is_the_uncached_answer() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    dispatcher = DomainDispatcherApplication(create_backend_app)
    for _ in range(2):
        assert dispatcher.get_backend_for_host("states.us-east-1.amazonaws.com") == "stepfunctions"
        assert dispatcher.get_backend_for_host("s3.amazonaws.com") == "s3"
        assert dispatcher.get_backend_for_host("nothing.example") is None
