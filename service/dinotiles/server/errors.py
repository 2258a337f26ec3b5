"""One status map for the whole app: dinotiles' own errors carry their status; the libraries' are listed.

5xx answers are logged with the request id; 503s say when to retry; anything unexpected is a 500
with the request id and no traceback (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from morecantile.errors import MorecantileError
from rasterio.errors import RasterioError
from rio_tiler.errors import RioTilerError, TileOutsideBounds
from starlette.requests import Request
from starlette.responses import JSONResponse
from titiler.core.errors import DEFAULT_STATUS_CODES

from dinotiles.core.errors import DinotilesError, Unavailable

logger = logging.getLogger("dinotiles")

# errors of the libraries under us; ours carry `status` themselves
LIBRARY_STATUS: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    TileOutsideBounds: 404,
    MorecantileError: 400,  # e.g. a zoom a variable-width TileMatrixSet does not define
    RasterioError: 400,
    RioTilerError: 400,
}


def status_of(exc: Exception) -> int:
    if isinstance(exc, DinotilesError):
        return exc.status
    for cls in type(exc).__mro__:
        if cls in LIBRARY_STATUS:
            return LIBRARY_STATUS[cls]
    return 500


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    code = status_of(exc)
    headers = {}  # X-Request-ID: added by RequestGuard on the way out
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if code >= 500:
        logger.warning("%s %s -> %d [%s]: %s", request.method, request.url.path, code, _request_id(request), exc)
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s -> 500 [%s]", request.method, request.url.path, _request_id(request))
    # this handler runs outside RequestGuard (Starlette's ServerErrorMiddleware): tag the answer here
    return JSONResponse(
        {"detail": f"internal error (request id {_request_id(request)})"},
        status_code=500,
        headers={"X-Request-ID": _request_id(request)},
    )


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI answers bad parameters with 422 JSON; keep its list and add one readable line."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse(
        {
            "detail": f"{where}: {first.get('msg', 'invalid request')}",
            "errors": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors],
        },
        status_code=422,
    )


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {
        "detail": {"type": "string", "title": "Detail"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array", "items": {}}, "msg": {"type": "string"}},
            },
        },
    },
    "required": ["detail"],
}


def document_errors(app: FastAPI) -> None:
    """The OpenAPI says what errors look like here: ``{"detail": "one line"}`` (422 adds ``errors``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["HTTPValidationError"] = ERROR_SCHEMA
        schemas["Error"] = ERROR_SCHEMA
        for methods in spec.get("paths", {}).values():
            for op in methods.values():
                responses = op.setdefault("responses", {})
                for code, what in (("400", "bad request"), ("404", "not found"), ("502", "upstream failed")):
                    responses.setdefault(
                        code,
                        {
                            "description": what,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                    )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def add_error_handlers(app: FastAPI) -> None:
    handled: list[type[Exception]] = [DinotilesError, *LIBRARY_STATUS]
    for cls in handled:
        app.add_exception_handler(cls, _answer)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    document_errors(app)
