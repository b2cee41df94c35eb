"""``skimgfeat serve``: the archive in a browser (search by photo, review, decisions), on this machine by default."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import secrets
import sys
import threading
from pathlib import Path

from .common import (
    EXIT_OK,
    UsageError,
    add_command,
    add_table_photo_options,
    positive_int,
    usage_errors,
    weights_from_env,
)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``serve``."""
    serve = add_command(
        commands, common, "serve", "open the archive in a browser: search by photo, review copies, record decisions",
        "A local web application on ARCHIVE (an archive folder made by `skimgfeat ingest`, followed as later "
        "intakes and removals change it; a feature table written by `skimgfeat extract --hashes "
        "--local-features`, its output folder, or an index folder): search by an uploaded photo or by an image "
        "name or item id, each result with its verdict (copy, same_object, similar) and its lot columns; the "
        "pair side by side with the matched keypoints; review of the duplicate groups and of an intake report, "
        "with decisions (same / not the same) that `duplicates` and `match` honour from then on; item pages "
        "with quality measures; a JSON API behind every page (GET /api lists it). Needs the serve extra: "
        "pip install 'skimgfeat[serve]'. Binds 127.0.0.1; any other host needs --token.",
    )
    serve.add_argument("archive", type=Path, metavar="ARCHIVE", help="archive folder, feature table, extract "
                                                                     "output folder or index folder")
    serve.add_argument("--lots", type=Path, default=None, metavar="LOTS.csv",
                       help="a lot table keyed by item_id (CSV or Parquet): its columns are shown with each result")
    serve.add_argument("--report", type=Path, default=None, metavar="REPORT.csv",
                       help="the day's intake report to review: `duplicates NEW --against ARCHIVE --pairs` or "
                            "`match` output")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free one)")
    serve.add_argument("--token", default=None,
                       help="a secret every request must carry (?token=, Authorization: Bearer, or the cookie the "
                            "first ?token= sets); required for a host other than 127.0.0.1; 'generate' makes one")
    serve.add_argument("-k", type=positive_int, default=12,
                       help="photos per search; an upload's are all verified, about 16 ms of CPU each (default: "
                            "%(default)s)")
    serve.add_argument("--max-upload-mb", type=positive_int, default=25, metavar="MB",
                       help="largest upload taken, in megabytes (default: %(default)s)")
    serve.add_argument("--max-upload-megapixels", type=positive_int, default=40, metavar="MP",
                       help="largest upload taken, in megapixels (default: %(default)s)")
    serve.add_argument("--follow", type=float, default=10.0, metavar="SECONDS",
                       help="how often to look for a newer generation of an archive folder (a later ingest or "
                            "remove), which the pages then show without a restart; 0: never (default: "
                            "%(default)s)")
    serve.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help="where thumbnails and uploads are kept (default: a temporary folder)")
    add_table_photo_options(serve, embedded="uploaded photos")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Open the archive and serve it until interrupted."""
    token = secrets.token_urlsafe(24) if args.token == "generate" else args.token
    if not _is_loopback(args.host) and not token:
        raise UsageError(f"--host {args.host} opens the archive to other machines: give --token SECRET (or "
                         "--token generate)")
    for module in ("uvicorn", "starlette", "jinja2", "multipart"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"serve needs the serve extra ({module} is missing): pip install 'skimgfeat[serve]'")
    import uvicorn

    from ..serve.app import ServeApp, create_app
    from ..serve.source import open_source

    with usage_errors():
        source = open_source(args.archive, image_dir=args.image_dir, lots=args.lots, report=args.report,
                             weights=weights_from_env(args.weights))
    if source.index.model_info:  # the network for uploads, built while the server starts (not by the first upload)
        threading.Thread(target=_warm, args=(source,), daemon=True, name="skimgfeat-warm-up").start()
    state = ServeApp(source, cache_dir=args.cache_dir, max_upload_bytes=args.max_upload_mb * 2**20,
                     max_upload_pixels=args.max_upload_megapixels * 1_000_000, k=args.k)
    stop_following = threading.Event()
    if source.generation is not None and args.follow > 0:
        state.follow_archive_every(args.follow, stop_following)
    config = uvicorn.Config(create_app(state, token=token), host=args.host, port=args.port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    address = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{{port}}/"

    async def announce() -> None:  # the port is known once the socket is bound (--port 0)
        port = server.servers[0].sockets[0].getsockname()[1]
        where = address.format(port=port) + (f"?token={token}" if token else "")
        print(f"skimgfeat: serving {os.fspath(args.archive)} ({len(source.index):,} photos) on {where}",
              file=sys.stderr, flush=True)

    try:
        _run(server, announce)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: uvicorn has shut down cleanly
        pass
    finally:
        stop_following.set()
    if not args.quiet:
        print("skimgfeat: server stopped", file=sys.stderr)
    return EXIT_OK


def _run(server, announce) -> None:
    import asyncio

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            await announce()
        await serving

    asyncio.run(main())


def _warm(source) -> None:
    import tempfile
    from pathlib import Path

    from PIL import Image

    try:
        embedder = source.embedder()
        with tempfile.TemporaryDirectory(prefix="skimgfeat-warm-") as folder:  # the first batch sets up the runtime
            photo = Path(folder) / "grey.png"
            Image.new("RGB", (64, 64), (128, 128, 128)).save(photo)
            with source._embedder_lock:
                embedder.transform([str(photo)])
    except Exception as error:  # noqa: BLE001 - the first upload then reports it, as a 400/500 of its own
        print(f"skimgfeat: warning: the network for uploads cannot be built: {error}", file=sys.stderr)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
