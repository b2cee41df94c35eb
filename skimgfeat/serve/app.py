"""The web application of ``skimgfeat serve``: server-rendered pages, each with its JSON API.

Every page is a Jinja2 template over the same functions the JSON API returns (see
:data:`API` and docs/serve.md); the only script is the one that verifies the tiles of a
search by name one at a time. Starlette routes plain functions to its thread pool, so a
slow search never holds the event loop.
"""

from __future__ import annotations

import csv
import hmac
import io
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pandas as pd
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..exceptions import ImageLoadError
from ..plotting.match_sheet import match_sheet
from ..quality.measures import QUALITY_FEATURES, measure_quality
from ..schema import IMAGE_PATH
from ..storage.decisions import DECISIONS, NOT_SAME, SAME
from .files import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_PIXELS,
    ThumbnailCache,
    UploadRefused,
    UploadStore,
    photo_under,
)
from .review import Review, decisions_for_group
from .search import DEFAULT_K, Query, Searcher
from .source import ArchiveSource

HERE = Path(__file__).parent
TOKEN_COOKIE = "skimgfeat_token"
MAX_K = 100
# Display flags of the item page (docs/serve.md): a photo worth a second look, not a verdict.
SMALL_SIDE = 400
BLURRED_SHARPNESS = 100.0
CLIPPED_FRACTION = 0.25

API = {
    "GET /api": "this list",
    "GET /api/search?q=NAME&k=12&verify=N": "nearest photos of an archived photo (image_path, file name or item "
                                            "id); the first N verified (default: none, see /api/verify)",
    "POST /api/search (multipart: photo=FILE, k, verify)": "nearest photos of an uploaded photo, all verified",
    "GET /api/verify?q=NAME|upload=ID&b=NAME": "one candidate of a search, verified: verdict, inliers",
    "GET /api/pair?a=NAME|upload=ID&b=NAME": "a pair's verdict, inliers and matched keypoints",
    "GET /api/review/duplicates": "the duplicate groups, their pairs and decisions",
    "GET /api/review/intake": "the intake report's pairs and decisions",
    "GET /api/decisions": "the decisions in force, newest first (?history=1: every decision)",
    "POST /api/decisions (JSON: image_a, image_b, decision, source)": "record a decision: same or not_same",
    "GET /decisions.csv": "the decisions in force as CSV",
    "GET /api/item/ITEM_ID": "an item's photos, quality measures and flags",
}


class ServeApp:
    """The state behind the pages: the archive, searches, review, uploads and thumbnails."""

    def __init__(self, source: ArchiveSource, *, cache_dir: Path | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
                 k: int = DEFAULT_K):
        self.source = source
        self.k = k  # results per search (all verified for an upload: about 16 ms of CPU each)
        self.searcher = Searcher(source)
        self.review = Review(source)
        if cache_dir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="skimgfeat-serve-")
            cache_dir = Path(self._temporary.name)
        self.cache_dir = Path(cache_dir)
        self.uploads = UploadStore(self.cache_dir / "uploads", max_bytes=max_upload_bytes,
                                   max_pixels=max_upload_pixels)
        self.thumbnails = ThumbnailCache(self.cache_dir / "thumbnails")
        self._quality: dict[tuple, dict] = {}
        self._quality_lock = threading.Lock()
        self._retired: ArchiveSource | None = None  # the generation before the last switch

    # -- following the archive ----------------------------------------------------------

    def follow_archive(self) -> bool:
        """Switch to the archive folder's newest generation when a later intake or removal made one.

        The new generation is opened whole before the pages see it; a page being drawn
        meanwhile finishes on the one it started with, which stays on disk until the next
        switch. True when it switched.
        """
        source = self.source.newer()
        if source is None:
            return False
        searcher, review = Searcher(source), Review(source)
        retired, self._retired = self._retired, self.source
        self.source, self.searcher, self.review = source, searcher, review
        if retired is not None:
            retired.close()
        return True

    def follow_archive_every(self, seconds: float, stop: threading.Event) -> threading.Thread:
        """Check for a newer generation every ``seconds`` in a thread of its own, until ``stop`` is set.

        A generation that cannot be opened (say, a disk error) leaves the server on the one
        it has, with a warning, and is tried again at the next check.
        """
        def follow() -> None:
            while not stop.wait(seconds):
                try:
                    if self.follow_archive():
                        print(f"skimgfeat: now serving generation {self.source.generation} "
                              f"({len(self.source.index):,} photos)", file=sys.stderr, flush=True)
                except Exception as error:  # noqa: BLE001 - the pages keep the generation they have
                    print(f"skimgfeat: warning: could not open the archive's newer generation: {error}",
                          file=sys.stderr, flush=True)

        thread = threading.Thread(target=follow, daemon=True, name="skimgfeat-follow-archive")
        thread.start()
        return thread

    # -- queries ------------------------------------------------------------------------

    def query_of(self, params) -> Query:
        """The query of a request: ``q`` (an archived photo) or ``upload`` (an earlier upload)."""
        upload = params.get("upload")
        if upload:
            path = self.uploads.path_of(upload)
            if path is None:
                raise HTTPException(404, "no such upload (uploads are kept while the server runs)")
            return Query(label="uploaded photo", upload_id=upload, file=path)
        text = params.get("q") or params.get("a") or ""
        name = self.source.resolve_name(text)
        if name is None:
            raise HTTPException(404, f"{text!r} is neither an image_path, a file name nor an item id of the archive")
        return Query(label=name, name=name)

    def photo_file(self, name: str) -> Path:
        found = photo_under(self.source.photo_dirs, name)
        if found is None:
            raise HTTPException(404, "not found")
        return found

    def report_photo(self, row: int, side: str) -> Path:
        """A photo of the intake report named by its row: a new photo may lie outside the archive."""
        report = self.source.report
        if report is None or not 0 <= row < len(report) or side not in ("a", "b"):
            raise HTTPException(404, "not found")
        name = str(report.iloc[row]["image_a" if side == "a" else "image_b"])
        found = photo_under(self.source.photo_dirs, name)
        if found is None and side == "a" and Path(name).is_absolute() and Path(name).is_file():
            found = Path(name)  # a new photo the operator's report names by its full path
        if found is None:
            raise HTTPException(404, "not found")
        return found

    def quality(self, name: str) -> dict:
        """The quality measures of an archived photo and its flags, measured once."""
        path = self.photo_file(name)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._quality_lock:
            if key in self._quality:
                return self._quality[key]
        try:
            values = dict(zip(QUALITY_FEATURES, (float(value) for value in measure_quality(path))))
            error = ""
        except ImageLoadError as failure:
            values, error = {}, f"{failure.reason} ({failure.detail})"
        flags = []
        if values:
            if min(values["width"], values["height"]) < SMALL_SIDE:
                flags.append("small")
            if values["sharpness"] < BLURRED_SHARPNESS:
                flags.append("blurred")
            if values["overexposed"] > CLIPPED_FRACTION:
                flags.append("overexposed")
            if values["underexposed"] > CLIPPED_FRACTION:
                flags.append("underexposed")
        measured = {IMAGE_PATH: name, "measures": {key: _rounded(value) for key, value in values.items()},
                    "flags": flags, "error": error}
        with self._quality_lock:
            self._quality[key] = measured
        return measured


def create_app(state: ServeApp, *, token: str | None = None) -> Starlette:
    """The Starlette application over ``state``; every request must carry ``token`` when one is given."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(photo_url=_photo_url, thumb_url=_thumb_url, urlencode=urlencode)
    templates.env.filters.update(combine=lambda first, second: {**first, **second}, item_of=state.source.item_of)

    def page(request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        context = {"archive": state.source.path.name, "n_photos": len(state.source.index),
                   "example_name": str(state.source.index.names[0]) if len(state.source.index) else "",
                   "has_report": state.source.report is not None,
                   "has_local_features": state.source.local_features is not None, **context}
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    # -- search -------------------------------------------------------------------------

    def home(request: Request) -> Response:
        return page(request, "search.html", {"query": None, "hits": [], "k": state.k})

    def search_by_name(request: Request) -> Response:
        params = request.query_params
        if not params.get("q"):
            if wants_json(request):
                raise HTTPException(400, "give q=NAME (an image_path, file name or item id)")
            return home(request)
        query = state.query_of(params)
        k = _bounded_int(params.get("k"), state.k, 1, MAX_K, "k")
        verify = _bounded_int(params.get("verify"), 0, 0, MAX_K, "verify")
        hits = state.searcher.search(query, k, verify=verify)
        if wants_json(request):
            return JSONResponse({"query": _query_dict(query), "k": k, "hits": [hit.as_dict() for hit in hits]})
        return page(request, "search.html", {"query": query, "hits": hits, "k": k})

    async def search_by_upload(request: Request) -> Response:
        try:
            query, k = await _uploaded_query(request, state)
            hits = await run_in_threadpool(state.searcher.search, query, k)
        except (UploadRefused, ImageLoadError) as refused:
            if wants_json(request):
                return JSONResponse({"error": str(refused)}, status_code=400)
            return page(request, "search.html", {"query": None, "hits": [], "k": state.k,
                                                 "error": str(refused)}, status_code=400)
        if wants_json(request):
            return JSONResponse({"query": _query_dict(query), "k": k, "hits": [hit.as_dict() for hit in hits]})
        return page(request, "search.html", {"query": query, "hits": hits, "k": k})

    def verify(request: Request) -> Response:
        query = state.query_of(request.query_params)
        name = request.query_params.get("b", "")
        try:
            hit = state.searcher.verify_pair(query, name)
        except KeyError as missing:
            raise HTTPException(404, str(missing)) from None
        return JSONResponse({"query": _query_dict(query), **hit.as_dict()})

    # -- the pair -----------------------------------------------------------------------

    def pair(request: Request) -> Response:
        query = state.query_of(request.query_params)
        name = request.query_params.get("b", "")
        if name not in state.source.index:
            raise HTTPException(404, f"{name!r} is not a photo of the archive")
        hit = state.searcher.verify_pair(query, name)
        verification = state.searcher.pair_verification(query, name)
        details = {"query": _query_dict(query), **hit.as_dict(),
                   "points_a": [] if verification is None else verification.points_a.round(1).tolist(),
                   "points_b": [] if verification is None else verification.points_b.round(1).tolist()}
        if wants_json(request):
            return JSONResponse(details)
        decision = state.source.decisions.decision(query.name, name) if query.name else None
        return page(request, "pair.html", {"query": query, "hit": hit, "decision": decision,
                                           "image_query": urlencode(_query_params(query) | {"b": name})})

    def pair_png(request: Request) -> Response:
        query = state.query_of(request.query_params)
        name = request.query_params.get("b", "")
        if name not in state.source.index or state.source.matcher is None:
            raise HTTPException(404, "not found")
        hit = state.searcher.verify_pair(query, name)
        query_file = query.file if query.file is not None else state.photo_file(query.name)
        row = pd.DataFrame([{"query": str(query_file), "rank": 1, IMAGE_PATH: name,
                             "feature_distance": hit.distance, "inliers": hit.inliers or 0,
                             "verdict": hit.verdict if hit.verdict != "similar" else "different"}])
        picture = match_sheet(row, state.source.matcher, height=360, max_lines=120)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    # -- review -------------------------------------------------------------------------

    def review_duplicates(request: Request) -> Response:
        groups = state.review.groups()
        if wants_json(request):
            return JSONResponse({"groups": [group.as_dict() for group in groups]})
        waiting = [group for group in groups if group.waiting]
        position = _bounded_int(request.query_params.get("at"), 0, 0, 10**9, "at")
        group = waiting[position % len(waiting)] if waiting else None
        return page(request, "review.html", {"group": group, "n_waiting": len(waiting), "n_groups": len(groups),
                                             "position": position, "next": position + 1})

    def review_intake(request: Request) -> Response:
        rows = state.review.intake()
        if wants_json(request):
            return JSONResponse({"pairs": rows})
        waiting = [row for row in rows if not row["decision"]]
        position = _bounded_int(request.query_params.get("at"), 0, 0, 10**9, "at")
        row = waiting[position % len(waiting)] if waiting else None
        lot = state.source.lot_of(row["image_b"]) if row else {}
        shown = ("row", "image_a", "image_b", "decision")  # the report's own lot_ columns repeat the lot table
        columns = [column for column in (rows[0] if rows else {})
                   if column not in shown and not (lot and str(column).startswith("lot_"))]
        archived = row is not None and row["image_a"] in state.source.index  # the pair view needs both archived
        return page(request, "intake.html", {"row": row, "n_waiting": len(waiting), "n_rows": len(rows),
                                             "columns": columns, "lot": lot, "next": position + 1,
                                             "archived": archived})

    # -- decisions ----------------------------------------------------------------------

    async def record_decision(request: Request) -> Response:
        if wants_json(request):
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, "send a JSON object: image_a, image_b, decision, source") from None
            if not isinstance(body, dict):
                raise HTTPException(400, "send a JSON object: image_a, image_b, decision, source")
            recorded = await run_in_threadpool(_record, state, [(body.get("image_a"), body.get("image_b"))],
                                               body.get("decision"), body.get("source", "api"))
            return JSONResponse({"recorded": recorded})
        form = await request.form(max_files=0, max_fields=20)
        decision, source = form.get("decision", ""), form.get("source", "")
        if form.get("group") is not None:  # a whole group of copies at once
            groups = {str(group.number): group for group in state.review.groups()}
            group = groups.get(str(form.get("group")))
            pairs = decisions_for_group(group, decision) if group is not None and decision in DECISIONS else []
        else:
            pairs = [(form.get("image_a"), form.get("image_b"))]
        if decision != "skip":
            await run_in_threadpool(_record, state, pairs, decision, source)
        return RedirectResponse(_local_path(form.get("next", "/decisions")), status_code=303)

    def decisions(request: Request) -> Response:
        store = state.source.decisions
        table = store.history() if request.query_params.get("history") else store.latest()
        records = table.to_dict("records")
        if wants_json(request):
            return JSONResponse({"decisions": records, "file": str(store.path)})
        return page(request, "decisions.html", {"decisions": records, "file": str(store.path)})

    def decisions_csv(request: Request) -> Response:
        buffer = io.StringIO()
        table = state.source.decisions.latest()
        table.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="decisions.csv"'})

    # -- items and files ----------------------------------------------------------------

    def item(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        photos = state.source.photos_of(item_id)
        if not photos:
            raise HTTPException(404, f"no photo of item {item_id!r} in the archive")
        measured = [state.quality(name) for name in photos]
        lot = state.source.lot_of(photos[0])
        if wants_json(request):
            return JSONResponse({"item_id": item_id, "lot": lot, "photos": measured})
        return page(request, "item.html", {"item_id": item_id, "lot": lot, "photos": measured,
                                           "columns": QUALITY_FEATURES})

    def photo(request: Request) -> Response:
        return FileResponse(state.photo_file(request.path_params["name"]))

    def thumbnail(request: Request) -> Response:
        return _thumbnail_response(state, state.photo_file(request.path_params["name"]))

    def report_thumbnail(request: Request) -> Response:
        row = _bounded_int(request.path_params["row"], 0, 0, 10**9, "row")
        return _thumbnail_response(state, state.report_photo(row, request.path_params["side"]))

    def upload_thumbnail(request: Request) -> Response:
        path = state.uploads.path_of(request.path_params["upload_id"])
        if path is None:
            raise HTTPException(404, "not found")
        return _thumbnail_response(state, path)

    def api(request: Request) -> Response:
        return JSONResponse({"endpoints": API})

    async def http_error(request: Request, error: HTTPException) -> Response:
        if wants_json(request) or request.url.path.startswith(("/photo/", "/thumb/", "/pair.png")):
            return JSONResponse({"error": error.detail}, status_code=error.status_code)
        return page(request, "error.html", {"status": error.status_code, "message": error.detail},
                    status_code=error.status_code)

    routes = [
        Route("/", home),
        Route("/search", search_by_name, methods=["GET"]),
        Route("/search", search_by_upload, methods=["POST"]),
        Route("/api/search", search_by_name, methods=["GET"]),
        Route("/api/search", search_by_upload, methods=["POST"]),
        Route("/api/verify", verify),
        Route("/pair", pair),
        Route("/api/pair", pair),
        Route("/pair.png", pair_png),
        Route("/review", lambda request: RedirectResponse("/review/duplicates", status_code=303)),
        Route("/review/duplicates", review_duplicates),
        Route("/api/review/duplicates", review_duplicates),
        Route("/review/intake", review_intake),
        Route("/api/review/intake", review_intake),
        Route("/decisions", decisions, methods=["GET"]),
        Route("/decisions", record_decision, methods=["POST"]),
        Route("/api/decisions", decisions, methods=["GET"]),
        Route("/api/decisions", record_decision, methods=["POST"]),
        Route("/decisions.csv", decisions_csv),
        Route("/item/{item_id}", item),
        Route("/api/item/{item_id}", item),
        Route("/photo/{name:path}", photo),
        Route("/thumb/{name:path}", thumbnail),
        Route("/report-thumb/{row}/{side}", report_thumbnail),
        Route("/upload-thumb/{upload_id}", upload_thumbnail),
        Route("/api", api),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, 404: http_error})
    app.state.serve = state
    return _Guard(app, token)


# -- the guard: token and origin on every request ------------------------------------------


class _Guard:
    """ASGI middleware: with a token, every request carries it (header, cookie, or ``?token=`` once).

    ``?token=`` on a page sets an HTTP-only, same-site cookie and redirects to the page
    without it, so links and forms work and the token does not stay in the address bar.
    A POST from a page of another site (its ``Origin`` is not this server) is refused.
    """

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.method == "POST" and not _same_origin(request):
            await PlainTextResponse("cross-site request refused", status_code=403)(scope, receive, send)
            return
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and _equal(given, self.token) and request.method == "GET":
                rest = [(key, value) for key, value in request.query_params.multi_items() if key != "token"]
                target = URL(scope=scope).replace(query=urlencode(rest))
                response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""),
                                            status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            if not self._carries_token(request):
                await JSONResponse({"error": "this server needs its token: ?token=..., the Authorization header "
                                             "(Bearer) or the cookie"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _carries_token(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        candidates = [header[7:] if header.lower().startswith("bearer ") else "",
                      request.cookies.get(TOKEN_COOKIE, "")]
        return any(candidate and _equal(candidate, self.token) for candidate in candidates)


def _equal(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent by a browser's cross-site form or script
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


# -- helpers ---------------------------------------------------------------------------------


async def _uploaded_query(request: Request, state: ServeApp) -> tuple[Query, int]:
    length = request.headers.get("content-length")
    limit = state.uploads.max_bytes
    if length is None or not length.isdigit():
        raise UploadRefused("an upload needs its Content-Length")
    if int(length) > limit + 2**16:  # the photo and the form around it
        raise UploadRefused(f"the upload has {int(length):,} bytes, more than the {limit:,} taken")
    form = await request.form(max_files=1, max_fields=10)
    upload = form.get("photo")
    if upload is None or isinstance(upload, str):
        raise UploadRefused("no photo in the upload: send it as the form field 'photo'")
    data = await upload.read(limit + 1)
    k = _bounded_int(form.get("k"), state.k, 1, MAX_K, "k")
    upload_id, path = await run_in_threadpool(state.uploads.take, data, upload.filename or "")
    return Query(label=upload.filename or "uploaded photo", upload_id=upload_id, file=path), k


def _record(state: ServeApp, pairs, decision, source) -> list[dict]:
    if decision not in (SAME, NOT_SAME):
        raise HTTPException(400, f"decision must be {SAME!r} or {NOT_SAME!r}, got {decision!r}")
    recorded = []
    for a, b in pairs:
        known_a = isinstance(a, str) and (a in state.source.index or _in_report(state, a))
        if not known_a or not isinstance(b, str) or b not in state.source.index:
            raise HTTPException(400, f"({a!r}, {b!r}) is not a pair of the archive's photos")
        try:
            recorded.append(state.source.decisions.record(a, b, decision, source=str(source or "")))
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
    return recorded


def _in_report(state: ServeApp, name: str) -> bool:
    report = state.source.report
    return report is not None and name in set(report["image_a"].astype(str))


def _thumbnail_response(state: ServeApp, path: Path) -> Response:
    try:
        thumbnail = state.thumbnails.thumbnail(path)
    except ImageLoadError:
        raise HTTPException(404, "not found") from None
    return FileResponse(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _bounded_int(text, default: int, low: int, high: int, name: str) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise HTTPException(400, f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be from {low} to {high}, got {value}")
    return value


def _local_path(target) -> str:
    """Only a path of this server as a redirect target (never another site)."""
    target = str(target or "/")
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _query_params(query: Query) -> dict:
    return {"upload": query.upload_id} if query.upload_id else {"q": query.name}


def _query_dict(query: Query) -> dict:
    return {"label": query.label, IMAGE_PATH: query.name, "upload_id": query.upload_id}


def _photo_url(name: str) -> str:
    return "/photo/" + quote(str(name))


def _thumb_url(name: str) -> str:
    return "/thumb/" + quote(str(name))


def _rounded(value: float):
    return round(value, 4) if value == value else None
