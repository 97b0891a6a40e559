"""moto's per-request dispatch, its pure lookups computed once instead of on every request.

A request the emulator answers cost 2-3 ms of CPU, and part of it was moto recomputing
answers that never change while the server runs (profiled under a burst):
- `list_of_moto_modules()` lists moto's package folder (~200 `isdir` calls) per request;
- `DomainDispatcherApplication.get_backend_for_host` tries the URL patterns of every backend
  in turn until one matches the request's host (hundreds of regexes for the later services);
- `settings.get_s3_custom_endpoints()` reads and splits an environment variable on every S3
  request;
- `method_names_from_class` lists a response class's methods with `inspect.getmembers` on
  every request (to check the action names a method);
- moto runs its Flask apps in debug mode, where Flask wraps each request's `files` in a new
  class built for that request (`debughelpers.attach_enctype_error_multidict`): 7 % of a
  request's CPU. The class is built once per wrapped class here, with the same behaviour (a
  missing file that was sent as a form field raises Flask's `DebugFilesKeyError`).
Each is a function of its arguments (and of the environment the server started with), so its
answer is cached here. Nothing about what a request does changes.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

_installed = False
_lock = threading.Lock()


def install() -> None:
    """Cache the lookups (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        from moto import backends, settings
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication

        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]

        endpoints = tuple(settings.get_s3_custom_endpoints())
        settings.get_s3_custom_endpoints = lambda: list(endpoints)

        uncached = DomainDispatcherApplication.get_backend_for_host
        by_host: dict[str | None, Any] = {}

        def get_backend_for_host(self: Any, host: str | None) -> Any:
            try:
                return by_host[host]
            except KeyError:
                backend = uncached(self, host)
                if backend is not None and len(by_host) < 1024:  # hosts are few; never unbounded
                    by_host[host] = backend
                return backend

        DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]
        _cache_debug_files_class()
        _cache_method_names()
        _installed = True


def _cache_method_names() -> None:
    from moto.core import responses, utils

    uncached = utils.method_names_from_class
    names: dict[tuple[type, tuple[int, ...]], list[str]] = {}

    def method_names_from_class(clazz: Any) -> list[str]:
        # A method patched in later (this emulator patches moto) changes a class dict's size.
        key = (clazz, tuple(len(vars(base)) for base in clazz.__mro__))
        found = names.get(key)
        if found is None:
            found = names[key] = uncached(clazz)
        return list(found)

    responses.method_names_from_class = method_names_from_class


def _cache_debug_files_class() -> None:
    from flask import debughelpers

    classes: dict[type, type] = {}

    def attach_enctype_error_multidict(request: Any) -> None:
        files = request.files
        plain = files.__class__
        debug = classes.get(plain)
        if debug is None:
            debug = classes[plain] = _debug_files_class(plain)
        files.__class__ = debug
        files.__dict__["_debug_request"] = weakref.ref(request)

    debughelpers.attach_enctype_error_multidict = attach_enctype_error_multidict


def _debug_files_class(plain: type) -> type:
    """Flask's per-request subclass (debughelpers.attach_enctype_error_multidict), made once."""
    from flask.debughelpers import DebugFilesKeyError

    class DebugFiles(plain):  # type: ignore[valid-type,misc]
        def __getitem__(self, key: str) -> Any:
            try:
                return super().__getitem__(key)
            except KeyError as error:
                reference = self.__dict__.get("_debug_request")
                request = reference() if reference is not None else None
                if request is None or key not in request.form:
                    raise
                raise DebugFilesKeyError(request, key).with_traceback(error.__traceback__) from None

    DebugFiles.__name__ = plain.__name__
    DebugFiles.__module__ = plain.__module__
    return DebugFiles
