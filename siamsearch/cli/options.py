"""The command-line options several commands share (siamsearch.cli.app and siamsearch.cli.cluster), declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DecodeWorkers = Annotated[Optional[int], typer.Option("--workers", help="Decode workers (default: cores - 1).")]
IndexDir = Annotated[Path, typer.Option("--index", help="Index folder.")]
TargetPrecision = Annotated[float, typer.Option(min=0.0, max=1.0, help="Precision the second threshold is set for.")]
Seed = Annotated[int, typer.Option()]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Include = Annotated[Optional[list[str]], typer.Option(help="Only files matching this glob (relative path, gitignore "
                                                           "style; repeatable). An index remembers it.")]
Exclude = Annotated[Optional[list[str]], typer.Option(help="Skip files and folders matching this glob (repeatable). "
                                                           "An index remembers it.")]
Amp = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 (default: an index's own; else CUDA only).")]
