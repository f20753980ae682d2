"""JSON errors with a stable code, and the request-size limit.

Every error answer is ``{"error": {"code": CODE, "message": ONE_LINE}}`` with one of :data:`CODES`,
whatever raised it: this package (:class:`ApiError`), FastAPI's parameter checks (``bad_parameter``),
an unknown route (``not_found``) or a bug (``internal``, logged with its traceback, never sent).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ctl_lightning.serve")

CODES = {
    "bad_parameter": 422,  # k out of range, a product key with path characters, an unknown category, a bad box
    "unknown_product": 404,
    "not_found": 404,  # no such route
    "method_not_allowed": 405,
    "upload_too_large": 413,
    "not_an_image": 415,  # undecodable bytes, a decompression bomb
    "no_model": 503,  # image queries need the run's checkpoint, which is not there
    "missing_token": 401,
    "wrong_token": 403,
    "reload_disabled": 403,  # the server was started without CTL_SERVE_TOKEN
    "reload_in_progress": 409,
    "reload_failed": 422,  # the new run's catalogs did not load: the old ones are still served
    "internal": 500,
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message, self.status = code, message, CODES[code]

    def detail(self) -> ErrorDetail:
        return ErrorDetail(code=self.code, message=self.message)


def error_response(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=CODES[code])


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.code, error.message)

    async def validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response("bad_parameter", _validation_message(error))

    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}.get(error.status_code)
        if code is None:
            return JSONResponse({"error": {"code": "bad_request", "message": str(error.detail)}}, status_code=error.status_code)
        return error_response(code, str(error.detail))

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response("internal", f"unexpected error ({type(error).__name__}); the server log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 ``upload_too_large``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a body that grows
    past it (chunked, or lying about its length) is cut off as soon as it does, so an upload never
    costs more than ``limit`` bytes of memory or disk.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self) -> JSONResponse:
        return error_response("upload_too_large", f"the request body is larger than the server's limit of {self.limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["exceeded"] = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                return  # whatever the app makes of the cut-off body, the answer is 413
            state["started"] = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if state["exceeded"] and not state["started"]:
            await self._too_large()(scope, receive, send)
