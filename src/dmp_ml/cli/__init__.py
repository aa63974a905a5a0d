"""The ``dmp-ml`` command line: parse arguments, call the library, print. No logic of its own.

Commands live by topic (:mod:`~dmp_ml.cli.data`, :mod:`~dmp_ml.cli.models`,
:mod:`~dmp_ml.cli.activation`, :mod:`~dmp_ml.cli.serving`) and are registered here, in the
order ``dmp-ml --help`` lists them. Heavy libraries (pandas, the models, MLflow, BentoML) are
imported inside the commands, so ``dmp-ml --help`` answers quickly.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer

from dmp_ml import __version__
from dmp_ml.cli import activation, data, models, serving
from dmp_ml.cli.common import err
from dmp_ml.errors import DmpMlError, RequestError

app = typer.Typer(
    name="dmp-ml",
    help="Audience models for a marketing DMP: validate, features, train, score, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command()(data.validate)
app.command("demo-data")(data.demo_data)
app.command()(data.features)
app.command()(models.train)
app.command()(models.score)
app.command("send-time")(models.send_time)
app.command()(models.lookalike)
app.command()(activation.segment)
app.command()(activation.export)
app.command()(serving.forget)
app.command()(models.promote)
app.command()(serving.events)
app.command()(serving.compact)
app.command()(serving.serve)
app.command()(activation.affinity)
app.command("retarget")(activation.retarget_command)
app.add_typer(activation.campaign_app, name="campaign")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if err.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "distributed", "bentoml", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # distributed sets its own loggers' levels from dask's config when it is imported
        # (after this), so the quiet default has to reach it through that config
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def _show_version(value: bool) -> None:
    if value:
        print(f"dmp-ml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging; tracebacks on errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if verbose and quiet:
        raise RequestError("--quiet", "give --verbose or --quiet, not both")
    _setup_logging(verbose, quiet)


def _error_line(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)


def _os_error_message(exc: OSError) -> str:
    """``path: reason`` for an OSError (both paths of a rename)."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return reason
    return f"{' -> '.join(os.fsdecode(p) for p in paths)}: {reason}"


def _click_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors, other click errors) as typer raises them.

    Typer >= 0.29 ships its own copy of click, so its errors are not ``click.ClickException``;
    older typers re-export click's. ``typer.BadParameter`` derives from the right ones either way.
    """
    mro = typer.BadParameter.__mro__
    usage = tuple(cls for cls in mro if cls.__name__ == "UsageError")
    other = tuple(cls for cls in mro if cls.__name__ == "ClickException")
    return usage, other


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: a user error is one line on stderr and exit code 2.

    Usage errors, typed dmp-ml errors and OS errors (a missing file, a full disk, a read-only
    folder) are reported that way; ``-v`` adds the traceback.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = list(sys.argv[1:] if argv is None else argv)
    flags = args[: args.index("--")] if "--" in args else args
    verbose = "-v" in flags or "--verbose" in flags
    usage_errors, click_errors = _click_errors()
    try:
        code = app(args=args, prog_name="dmp-ml", standalone_mode=False)
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if verbose:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _error_line(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
        raise SystemExit(2) from None
    except click_errors as exc:
        if verbose:
            traceback.print_exc()
        _error_line(exc.format_message())  # type: ignore[attr-defined]
        raise SystemExit(2) from None
    except DmpMlError as exc:
        if verbose:
            traceback.print_exc()
        _error_line(str(exc))
        raise SystemExit(2) from None
    except OSError as exc:
        if verbose:
            traceback.print_exc()
        _error_line(_os_error_message(exc))
        raise SystemExit(2) from None
    except (KeyboardInterrupt, typer.Abort):
        err.print("aborted")
        raise SystemExit(130) from None
    else:
        raise SystemExit(code if isinstance(code, int) else 0)
    finally:
        if argv is None:  # the process's own command line: the process ends with it
            # garbage collected once (finalizers run), then the rest left to the OS: the
            # interpreter's exit would walk every object of pandas and pyarrow again and
            # again (about 0.3 s of every command)
            gc.collect()
            gc.freeze()
