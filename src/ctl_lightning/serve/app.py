"""The FastAPI application of ``ctl-serve``.

Product queries run in the server's thread pool; image queries decode and crop there, then wait on
the micro-batcher (:mod:`.batching`), so concurrent uploads share forward passes. A reload loads
and checks the new run in full before one assignment puts it in place (:mod:`.state`).
"""

import asyncio
import hmac
import io
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Header, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctl_lightning.data.formats.common import box_from_text
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.embedder import NotAnImage, open_image
from ctl_lightning.retrieval.schema import IndexInfo, Recommendations, recommendations_document
from ctl_lightning.serve.errors import ApiError, BodyLimit, ErrorBody, ErrorDetail, install_error_handlers
from ctl_lightning.serve.metrics import Metrics
from ctl_lightning.serve.state import Holder, ReloadInProgress, Served, ServeSettings
from ctl_lightning.serve.watch import LinkWatcher, link_target

MULTIPART_SLACK = 64 * 1024  # form fields and part headers around an upload of the largest allowed image
# A row id or a product key (signature@x,y,w,h); never a path: no slashes, no "..", no control characters.
PRODUCT = re.compile(r"[^\x00-\x1f\x7f/\\]{1,300}")
Mode = Literal["similar", "complementary"]

ERRORS = {status: {"model": ErrorBody} for status in (404, 413, 415, 422, 503)}


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    run: str
    catalog: str
    products: int
    categories: list[str]
    model_fingerprint: str
    image_queries: bool = Field(description="false when the run's checkpoint is not there (product queries still work)")
    embedder: Literal["onnxruntime", "torch"] | None = Field(description="what embeds images: the run's ONNX export, or its checkpoint")
    index: IndexInfo = Field(description="the index searched: its kind and settings (ctl-serve --index), as answers' index")


class BatchQuery(BaseModel):
    mode: Mode
    product: str | int = Field(description="a row id or a product key (signature@x,y,w,h)")
    k: int = 5
    per_category: int = Field(1, description="complementary only: items per other category; 0: plain top-k")


class BatchRequest(BaseModel):
    queries: list[BatchQuery]


class BatchResult(BaseModel):
    """Each query of a batch succeeds or fails on its own."""

    recommendations: Recommendations | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


class ReloadRequest(BaseModel):
    run_dir: str | None = Field(None, description="the run to serve from now on; default: the one served now, read again")


class RequestMetrics:
    """ASGI middleware: every answer counted by route template and status, and timed."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            route = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")  # /v1/similar/{product}
            self.metrics.observe_request(scope["method"], route, status[0], time.perf_counter() - start)


def check_product(product: str | int) -> str:
    text = str(product).strip()
    if not PRODUCT.fullmatch(text) or ".." in text:
        raise ApiError("bad_parameter", f"product must be a row id or a product key (signature@x,y,w,h), not {text[:80]!r}")
    return text


def check_counts(k: int, per_category: int, max_k: int) -> None:
    if not 1 <= k <= max_k:
        raise ApiError("bad_parameter", f"k must be between 1 and {max_k}, got {k}")
    if not 0 <= per_category <= max_k:
        raise ApiError("bad_parameter", f"per_category must be between 0 and {max_k}, got {per_category}")


def create_app(
    run_dir: str | Path, settings: ServeSettings | None = None, token: str | None = None, watch_interval: float | None = None
) -> FastAPI:
    """The application serving ``run_dir``; a run that cannot serve is a :class:`CtlError` here.

    ``token``: what ``POST /admin/reload`` must be sent as ``Authorization: Bearer TOKEN``; ``None``
    turns reloading off. ``watch_interval``: ``run_dir`` is a symlink, followed (:mod:`.watch`) by
    looking where it points every that many seconds while the application runs.
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    link = Path(run_dir) if watch_interval is not None else None
    run_dir = link_target(link) if link is not None else run_dir
    holder = Holder(Served.load(run_dir, settings, metrics.observe_batch))
    metrics.serving(str(run_dir), len(holder.current.recommender), holder.current.fingerprint)

    def swap_in(run: Path) -> Served:
        """Load ``run`` and put it in place of the one served: the reload of the endpoint and of the watcher."""
        if not holder.reloading.acquire(blocking=False):
            raise ReloadInProgress("another reload is in progress")
        try:
            try:
                served = Served.load(run, settings, metrics.observe_batch)
            except CtlError:
                metrics.reloads.labels("failed").inc()
                raise
            holder.replace(served)
            metrics.serving(str(run), len(served.recommender), served.fingerprint)
            metrics.reloads.labels("ok").inc()
            return served
        finally:
            holder.reloading.release()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        watcher = LinkWatcher(link, Path(run_dir), swap_in, watch_interval).start() if link is not None else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()

    app = FastAPI(
        title="ctl-serve",
        summary="Similar and complementary fashion products from a ctl-lightning run's catalogs",
        description="Answers use the schema of ctl-recommend's recommendations.json. Errors are "
        '`{"error": {"code": CODE, "message": TEXT}}` with a stable code.',
        version="1",
        lifespan=lifespan,
    )
    app.state.holder, app.state.metrics, app.state.settings = holder, metrics, settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + MULTIPART_SLACK)
    app.add_middleware(RequestMetrics, metrics=metrics)
    K = Annotated[int, Query(ge=1, le=settings.max_k, description="how many recommendations")]
    PerCategory = Annotated[int, Query(ge=0, le=settings.max_k, description="items per other category; 0: plain top-k")]

    def answer(served: Served, mode: Mode, query, k: int, per_category: int) -> Recommendations:
        recommender = served.recommender
        try:
            result = (
                recommender.recommend_similar(query, k)
                if mode == "similar"
                else recommender.recommend_complementary(query, k, per_category)
            )
        except CtlError as error:
            raise ApiError("bad_parameter", str(error)) from None
        return recommendations_document(result, served.catalog, recommender.index_description())

    def product_answer(mode: Mode, product: str | int, k: int, per_category: int = 1) -> Recommendations:
        served = holder.current
        check_counts(k, per_category, settings.max_k)
        try:
            query = served.recommender.product_query(check_product(product))
        except CtlError as error:
            raise ApiError("unknown_product", str(error)) from None
        return answer(served, mode, query, k, per_category)

    async def image_answer(
        mode: Mode, image: UploadFile, box: str | None, category: str | None, k: int, per_category: int
    ) -> Recommendations:
        served = holder.current
        if served.batcher is None:
            raise ApiError("no_model", served.no_model or "image queries are not available")
        name = Path(image.filename or "upload").name[:200] or "upload"
        category = (category or "").strip() or None
        try:
            crop_box = box_from_text(box, what="box")
            if category is not None:
                served.recommender.index["similar"].require(category)
        except CtlError as error:
            raise ApiError("bad_parameter", str(error)) from None
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError("upload_too_large", f"the image {name} is larger than the server's limit of {settings.max_upload_bytes} bytes")
        crop = await run_in_threadpool(decoded_crop, served, data, name, crop_box)
        try:
            similar, compatible = await asyncio.wrap_future(served.batcher.submit(crop))
            query = served.recommender.embedded_query(similar, compatible, category, name, crop_box)
        except CtlError as error:
            raise ApiError("bad_parameter", str(error)) from None
        return await run_in_threadpool(answer, served, mode, query, k, per_category)

    @app.get("/healthz", response_model=Health, response_model_exclude_unset=True, tags=["service"])
    def healthz() -> Health:
        served = holder.current
        return Health(
            run=str(served.run_dir),
            catalog=served.catalog,
            products=len(served.recommender),
            categories=served.recommender.index["similar"].partitions,
            model_fingerprint=served.fingerprint,
            image_queries=served.batcher is not None,
            embedder=served.embedder.kind if served.embedder is not None else None,
            index=served.recommender.index_description(),
        )

    @app.get("/metrics", tags=["service"], response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    documented = {"response_model_exclude_unset": True, "responses": ERRORS, "tags": ["recommendations"]}

    @app.get("/v1/similar/{product:path}", response_model=Recommendations, **documented)
    def similar_product(product: str, k: K = 5) -> Recommendations:
        """Products of the same category that look alike."""
        return product_answer("similar", product, k)

    @app.get("/v1/complementary/{product:path}", response_model=Recommendations, **documented)
    def complementary_product(product: str, k: K = 5, per_category: PerCategory = 1) -> Recommendations:
        """Products of other categories that go with it."""
        return product_answer("complementary", product, k, per_category)

    Image = Annotated[UploadFile, File(description="a PNG, JPEG, WebP, BMP, GIF or TIFF picture")]
    BoxField = Annotated[str | None, Form(description="normalized x,y,w,h of the item in the picture; default: all of it")]
    CategoryField = Annotated[str | None, Form(description="the item's category; default: inferred by a nearest-neighbour vote")]

    @app.post("/v1/similar", response_model=Recommendations, **documented)
    async def similar_image(image: Image, box: BoxField = None, category: CategoryField = None, k: K = 5) -> Recommendations:
        """Similar products for an uploaded picture, embedded by the run's own model."""
        return await image_answer("similar", image, box, category, k, 1)

    @app.post("/v1/complementary", response_model=Recommendations, **documented)
    async def complementary_image(
        image: Image, box: BoxField = None, category: CategoryField = None, k: K = 5, per_category: PerCategory = 1
    ) -> Recommendations:
        """Complementary products for an uploaded picture."""
        return await image_answer("complementary", image, box, category, k, per_category)

    @app.post("/v1/batch", response_model=BatchResponse, **documented)
    def batch(request: BatchRequest) -> BatchResponse:
        """Many product queries at once; each result holds its recommendations or its own error."""
        if not 1 <= len(request.queries) <= settings.max_batch_queries:
            raise ApiError("bad_parameter", f"a batch holds 1 to {settings.max_batch_queries} queries, got {len(request.queries)}")
        results = []
        for q in request.queries:
            try:
                results.append(BatchResult(recommendations=product_answer(q.mode, q.product, q.k, q.per_category)))
            except ApiError as error:
                results.append(BatchResult(error=error.detail()))
        return BatchResponse(results=results)

    @app.post("/admin/reload", response_model=Health, tags=["service"], responses={s: {"model": ErrorBody} for s in (401, 403, 409, 422)})
    def reload(body: ReloadRequest | None = None, authorization: Annotated[str | None, Header()] = None) -> Health:
        """Serve another run (or the same one, rebuilt): loaded and checked before it replaces the one served."""
        if token is None:
            raise ApiError("reload_disabled", "reloading is off: start ctl-serve with CTL_SERVE_TOKEN set in its environment")
        if not authorization:
            raise ApiError("missing_token", "send the reload token as 'Authorization: Bearer TOKEN'")
        given = authorization.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError("wrong_token", "wrong reload token")
        run = Path(body.run_dir) if body and body.run_dir else holder.current.run_dir
        try:
            swap_in(run)
        except ReloadInProgress as error:
            raise ApiError("reload_in_progress", str(error)) from None
        except CtlError as error:
            raise ApiError("reload_failed", f"{error} (still serving {holder.current.run_dir})") from None
        return healthz()

    return app


def decoded_crop(served: Served, data: bytes, name: str, box) -> np.ndarray:
    """The model's crop of uploaded bytes; 415 ``not_an_image`` when they are not a picture Pillow will open."""
    try:
        image = open_image(io.BytesIO(data), name=name, max_pixels=Image.MAX_IMAGE_PIXELS)
    except NotAnImage as error:
        raise ApiError("not_an_image", f"{error}; send a PNG, JPEG, WebP, BMP, GIF or TIFF picture") from None
    return served.embedder.crop(image, box)
