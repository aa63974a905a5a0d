"""What the commands share: the consoles, the common options, reading ids, writing files,
and the progress of a command's steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from dmp_ml.errors import DataContractError, RequestError

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress

    from dmp_ml.settings import Settings

logger = logging.getLogger("dmp_ml.cli")

out = Console()

err = Console(stderr=True)

MappingOpt = Annotated[
    Path | None,
    typer.Option(
        "--mapping",
        help="YAML column mapping for a foreign log, or a packaged mapping's name (online_retail).",
    ),
]

ProfilesMappingOpt = Annotated[
    Path | None,
    typer.Option("--profiles-mapping", help="YAML column mapping for the profiles file."),
]

ConsentMappingOpt = Annotated[
    Path | None,
    typer.Option("--consent-mapping", help="YAML column mapping for the consent file."),
]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Settings YAML (default: the packaged config/default.yaml)."),
]

EventsOpt = Annotated[Path, typer.Option("--events", help="Event log, CSV or Parquet.")]

ProfilesOpt = Annotated[Path | None, typer.Option("--profiles", help="Profiles table.")]

ConsentOpt = Annotated[Path | None, typer.Option("--consent", help="Consent records.")]

WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Work directory holding the bundle.")]

IdsOpt = Annotated[
    Path | None, typer.Option("--ids", help="File with one profile id per line (default: all).")
]

OutOpt = Annotated[Path, typer.Option("--out", help="Output CSV.")]

RuleOpt = Annotated[Path | None, typer.Option("--rule", help="Segment rule file (JSON or YAML).")]

NameOpt = Annotated[str | None, typer.Option("--segment", help="A saved segment's name.")]

SendAtOpt = Annotated[
    bool, typer.Option("--send-time", help="Add send_at from the send-time model.")
]

WindowStartOpt = Annotated[
    str | None, typer.Option("--window-start", help="send_at window start, UTC (default as_of).")
]

WindowHoursOpt = Annotated[int, typer.Option("--window-hours", min=1, max=168)]

QuietOpt = Annotated[
    str | None, typer.Option("--quiet-hours", help="Local quiet hours START-END, e.g. 22-7.")
]

EmailOpt = Annotated[
    bool, typer.Option("--require-email", help="Only profiles with a hashed e-mail.")
]


def input_file(option: Path | None, argument: Path | None, command: str) -> Path:
    """The file of ``--events FILE``; the older positional form still works, with a note."""
    if option is not None and argument is not None:
        raise RequestError("--events", "give the file once: --events FILE")
    if argument is not None:
        err.print(
            f"note: `dmp-ml {command} FILE` is deprecated; use `dmp-ml {command} --events FILE`",
            highlight=False,
        )
        return argument
    if option is None:
        raise RequestError("--events", "missing option --events FILE")
    return option


def settings_for(config: Path | None, **overrides: object) -> Settings:
    from dmp_ml.settings import load_settings

    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def read_ids(path: Path) -> list[str]:
    if not path.exists():
        raise DataContractError(f"{path}: file not found")
    # lines end at \n only: an id holding another separator (U+2028, \x85, ...) stays one id,
    # which the library then refuses by name instead of acting on its fragments
    text = path.read_text(encoding="utf-8")
    ids = [line.strip(" \r\t") for line in text.split("\n")]
    ids = [i for i in ids if i and i != "profile_id"]
    if not ids:
        raise DataContractError(f"{path}: no ids in the file")
    return ids


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    from dmp_ml.csv_output import write_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, path)


def report_unknown(unknown: list[str], what: str = "ids") -> None:
    if unknown:
        shown = ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        err.print(f"{len(unknown)} unknown {what}: {shown}", highlight=False)


def parse_quiet_hours(text: str) -> tuple[int, int]:

    try:
        start, end = (int(part) for part in text.split("-"))
    except ValueError:
        raise RequestError("--quiet-hours", f"expected START-END hours, got {text!r}") from None
    return start, end


class Steps:
    """A command's steps: a rich bar (step n of N, elapsed, ETA) on a terminal, log lines otherwise.

    ``next()`` closes the running step and starts the next one. Nothing is shown with --quiet.
    """

    def __init__(self, command: str, names: Sequence[str]) -> None:
        self.command = command
        self.names = list(names)
        self.done = -1
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: int | None = None

    def __enter__(self) -> Steps:
        if err.is_terminal and logger.isEnabledFor(logging.INFO):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.command, total=len(self.names))
        return self

    def next(self) -> None:
        """Finish the running step (if any) and start the next one."""
        self.done += 1
        if self.done >= len(self.names):
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=self.done, description=self.names[self.done]
            )
        else:
            logger.info(
                "%s: step %d/%d: %s",
                self.command,
                self.done + 1,
                len(self.names),
                self.names[self.done],
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            while self.done < len(self.names):
                self.next()
            if self._progress is None:
                logger.info("%s: done in %.1f s", self.command, time.monotonic() - self.started)
        if self._progress is not None:
            self._progress.stop()
