"""``fracdet dicom-node``: a DICOM Storage SCP that answers a PACS with SR and Secondary Capture
results (see :mod:`fracdet.dicomnode`). Needs the ``dicomnode`` extra."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from fracdet.cli.options import add_backend_option, add_model_option

log = logging.getLogger("fracdet.dicomnode")


def _ae_title(text: str) -> str:
    title = text.strip()
    if not title or len(title) > 16 or not title.isascii() or "\\" in title:
        raise argparse.ArgumentTypeError("an AE title is 1 to 16 ASCII characters, no backslash")
    return title


def _destination(text: str) -> str:
    from fracdet.dicomnode.forward import parse_destination

    try:
        parse_destination(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_dicomnode(sub: Any) -> None:
    p = sub.add_parser(
        "dicom-node", help="a DICOM node beside a PACS: receive radiographs (C-STORE), answer with SR + "
        "secondary captures",
        description="Receive radiographs over DICOM (CR, DX, Secondary Capture), predict each study when its "
        "association is released, and write a TID 1500 structured report and a secondary capture per image "
        "into the same study, in --out and sent to --forward. Research use only: not a medical device.",
    )
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on (default 11112)")
    p.add_argument("--ae-title", type=_ae_title, default="FRACDET", help="this node's AE title (default FRACDET)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--out", default="dicom-results", metavar="DIR",
                   help="where results are written, one folder per study (default dicom-results/)")
    p.add_argument("--forward", type=_destination, default=None, metavar="AE@HOST:PORT",
                   help="send results there with C-STORE (kept in DIR/.outbox and retried until stored)")
    p.add_argument("--quiet", type=float, default=1.0, metavar="S",
                   help="seconds to wait after an association's release for more images of its study (default 1)")
    p.add_argument("--gsps", action="store_true",
                   help="also write a grayscale presentation state over the originals with each verdict as text "
                   "(no boxes: the model gives none)")
    add_model_option(p)
    add_backend_option(p)
    p.set_defaults(func=_cmd_dicomnode)


def _cmd_dicomnode(args: argparse.Namespace) -> int:

    # up front, so a missing extra stops the node before it listens (fracdet.cli.main names the extra)
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401
    import pynetdicom  # noqa: F401
    from fracdet.dicomnode.forward import Forwarder
    from fracdet.dicomnode.scp import DicomNode
    from fracdet.inference import load_model

    predictor = load_model(args.model, backend=args.backend)
    out = os.path.abspath(args.out)
    forwarder = Forwarder(args.forward, os.path.join(out, ".outbox"), calling_ae=args.ae_title) \
        if args.forward else None
    node = DicomNode(predictor, out, ae_title=args.ae_title, port=args.port, host=args.host,
                     forwarder=forwarder, quiet_s=args.quiet, gsps=args.gsps)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    node.start(block=False)
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        node.collector.wait_idle(timeout=60)
        node.stop()
        log.info("dicom-node %s stopped", args.ae_title)
    return 0
