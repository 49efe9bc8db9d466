"""Command-line logging: one line per event, third-party chatter kept out.

``configure`` (called once by the CLI) sends every log record through one rich handler and
turns Python warnings into log records.  Its filter keeps fracdet's own records, third-party
warnings and errors (each distinct warning once) and, at the default verbosity, drops
third-party INFO chatter except the distributed start-up lines a multi-process run needs;
advertisements ("💡 Tip: … litlogger") are dropped at every verbosity.  ``-v`` shows
third-party INFO, ``-vv`` debug output and the dependencies' deprecation warnings too.

Lightning's package ``__init__`` gives the ``lightning`` logger a StreamHandler of its own and
re-sets levels on import, which printed each Lightning message twice (``INFO: …`` and again
through ours).  ``quiet_lightning`` undoes that; fracdet.train calls it right after importing
Lightning.  Nothing here imports a heavy module.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

# Loggers of the Lightning packages (the unified ``lightning`` and the standalone ones).
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric",
                     "lightning_utilities")
# Dependencies whose deprecation / future warnings concern their own internals (or their use of
# each other), which a fracdet user cannot act on.  Matched against the module a warning is
# attributed to, so one that points at fracdet's own code still shows.
THIRD_PARTY_MODULES = (r"(lightning|lightning_fabric|lightning_utilities|pytorch_lightning|torch|torchvision|"
                       r"torchmetrics|timm|onnx|onnxruntime|onnxscript|PIL|matplotlib|sklearn|scipy|numpy|pydicom|"
                       r"tensorboard|tensorboardX|google\.protobuf|pytorch_grad_cam|rich)(\.|$)")
# Third-party INFO lines kept at the default verbosity: which process started, in a multi-process run.
_KEEP_INFO = re.compile(r"Initializing distributed: GLOBAL_RANK|All distributed processes registered")
# Advertisements, dropped at every verbosity.
_ADVERT = re.compile(r"💡|\bTip:|litlogger|litmodels|Lightning (Experiments|AI) platform", re.IGNORECASE)

_verbose: int | None = None  # set by configure(); None: a library user's own logging set-up, left alone


class QuietFilter(logging.Filter):
    """The one handler's filter: see the module docstring."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "fracdet" or name.startswith("fracdet."):
            return True
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            key = (name, msg)
            if key in self._seen:  # the same warning again (next phase, next Trainer): once is enough
                return False
            self._seen.add(key)
            return True
        if _ADVERT.search(msg):
            return False
        return self.verbose >= 1 or bool(_KEEP_INFO.search(msg))


def _short_path(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages", "src"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor):])
    return Path(filename).name


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: one log record ``Category: message (where)``.

    Replacing ``showwarning`` (not ``formatwarning``, which Lightning overrides on import) keeps
    the format ours whatever is imported later."""
    if file is not None:  # an explicit stream: behave as the standard function
        msg = warnings.WarningMessage(message, category, filename, lineno, file, line)
        warnings._showwarnmsg_impl(msg)  # type: ignore[attr-defined]
        return
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message,
                                             _short_path(filename), lineno)


def install_warning_filters(verbose: int) -> None:
    """Ignore the dependencies' deprecation and future warnings about themselves (kept at ``-vv``)."""
    if verbose > 1:
        return
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY_MODULES)


def configure(verbose: int) -> None:
    """The CLI's logging: one rich handler on the root logger with ``QuietFilter``."""
    from rich.logging import RichHandler

    global _verbose
    _verbose = verbose
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler.addFilter(QuietFilter(verbose))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("fracdet").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logging.captureWarnings(False)  # ours below, not logging's (which uses the overridable formatwarning)
    warnings.showwarning = _show_warning
    install_warning_filters(verbose)
    quiet_lightning()


def quiet_lightning() -> None:
    """Let Lightning's records reach the root handler once (call after importing Lightning).

    Only when the root logger has handlers (the CLI's, or a library user's own set-up):
    Lightning's private StreamHandlers are removed and its loggers propagate.  Otherwise
    Lightning's own handlers are its only output and stay.  Idempotent and cheap."""
    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:  # exactly Lightning's console handler, not a subclass
                lg.removeHandler(h)
        lg.propagate = True
        if _verbose is not None:  # the CLI decides the levels; Lightning set INFO on import
            lg.setLevel(logging.DEBUG if _verbose > 1 else logging.INFO)


__all__ = ["QuietFilter", "configure", "install_warning_filters", "quiet_lightning"]
