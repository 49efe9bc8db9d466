"""``fracdet serve``: the REST API (FastAPI + uvicorn) on the one inference path, recording every
prediction served (see :mod:`fracdet.serve`). Needs the ``serve`` extra."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from fracdet.cli.options import add_backend_option, add_model_option

log = logging.getLogger("fracdet.serve")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be more than 0")
        return value

    return parse


def add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve the model over HTTP: a REST API (POST /v1/predict) that records every reading",
        description="Serve a model as a REST API (OpenAPI schema at /docs) that records each prediction "
        "in a database. Research use only: not a medical device.",
    )
    add_model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require this key as the X-API-Key header on every route but /v1/health "
                   "(default: $FRACDET_API_KEY; none when both are unset)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="SQLAlchemy URL of the record of readings (default sqlite:///records.sqlite; "
                   "postgresql://user:pass@host/db works too)")
    p.add_argument("--no-records", action="store_true", help="keep no record (feedback is then refused)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=64.0, metavar="N",
                   help="largest request body, all files together, in MiB (default 64; 413 beyond)")
    p.add_argument("--max-pixels", type=_positive(int), default=64_000_000, metavar="N",
                   help="most pixels (rows × columns × frames) in one image, read from its header before "
                   "decoding (default 64,000,000; 413 beyond)")
    p.add_argument("--max-files", type=_positive(int), default=32, metavar="N", help="most files per request")
    p.add_argument("--workers", type=_positive(int), default=2, metavar="N",
                   help="inference worker threads (default 2); the model is loaded once and shared")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                   help="onnxruntime threads per inference (default: the CPUs shared out among the workers; "
                   "2 workers × 1 thread measured fastest on 2 cores, benchmarks/serve_load.py)")
    p.add_argument("--force", action="store_true",
                   help="also predict DICOM modalities that are refused by default (CT, MR, ...)")
    add_backend_option(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a: argparse.Namespace) -> int:

    import fastapi  # noqa: F401  (missing: fracdet.cli.main names the extra to install)
    import uvicorn
    from fracdet.inference import load_model
    from fracdet.serve.api import create_app
    from fracdet.serve.records import _shown
    from fracdet.serve.settings import DEFAULT_DB, Settings, model_name_of

    settings = Settings(model_name=model_name_of(a.model), api_key=Settings.api_key_from_env(a.api_key),
                        db_url=None if a.no_records else (a.db or DEFAULT_DB), max_upload_mb=a.max_upload_mb,
                        max_pixels=a.max_pixels, max_files=a.max_files, workers=a.workers, force_dicom=a.force)
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.workers)
    predictor = load_model(a.model, backend=a.backend, threads=threads)
    app = create_app(predictor, settings)
    log.info("serving %s (%s, SHA-256 %s…) on http://%s:%d — API key %s, records %s", settings.model_name,
             predictor.backend, predictor.artifact.sha256[:12], a.host, a.port,
             "required" if settings.api_key else "off", _shown(settings.db_url) if settings.db_url else "off")
    if a.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", a.host)
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_config=None, log_level="warning")
    return 0
