"""The `siamsearch` command: where every command's errors become one line and an exit code; version, demo, cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from .. import __version__
from .cluster import app as cluster_app
from ..training.distributed import is_main
from ..core.config import Runtime
from ..core.errors import SiamsearchError
from .options import Device
from .terminal import literal_help, Skipped, TrainProgress, console, err, fmt, shown



class Commands(TyperGroup):
    """Where every command ends: its errors in one line, and the exit code (errors.py lists them)."""

    ORDER = ("index", "relocate", "query", "info", "dedup", "review", "undo", "decisions", "train", "eval",
             "calibrate", "demo", "cluster", "version")  # as a user meets them: the help lists them so, whichever module registers each

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        literal_help(self)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda n: self.ORDER.index(n) if n in self.ORDER else 99)

    def invoke(self, ctx: typer.Context) -> Any:
        Skipped.count = 0
        try:
            result = super().invoke(ctx)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except typer.TyperException as exc:  # a bad option value: Typer's message, in one line
            if not hasattr(exc, "format_message"):
                raise
            fail(exc.format_message(), getattr(exc, "exit_code", 2))
        except SiamsearchError as exc:
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # disk full, permission denied: the machine's answer, in its words
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: one line, exit 4, the traceback on request
            if os.environ.get("SIAMSEARCH_DEBUG"):
                raise
            fail(f"internal error, please report it ({type(exc).__name__}: {exc}); "
                 "SIAMSEARCH_DEBUG=1 shows the traceback", 4)
        if Skipped.count:
            raise typer.Exit(1)
        return result


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Train a Siamese image encoder, index image folders, find neighbours and duplicates.")
app.add_typer(cluster_app, name="cluster")  # Ray and pyarrow load only when one of its commands runs


def fail(message: str, code: int = 2) -> None:
    """One-line error and a non-zero exit: how every user mistake ends (printed even with --quiet)."""
    err.quiet = False
    err.print(Text("error: ", style="bold red") + shown(message))
    raise typer.Exit(code)


@app.callback()
def main(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and --json output; the "
                                                                    "exit code still says what happened.")] = False,
         ) -> None:
    """Train a Siamese image encoder, index image folders, find neighbours and duplicates."""
    console.quiet = quiet or not is_main(os.environ)  # under torchrun, rank 0 alone speaks
    err.quiet = console.quiet


DATA, MODEL, SCHEDULE, OUTPUT, RUNTIME = "Data", "Model", "Schedule", "Output", "Runtime"  # train's help panels


@app.command()
def version() -> None:
    """Print the siamsearch version."""
    console.print(__version__)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, models and reports.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time of the digits encoder and its evaluation.")] = 2.0,
    device: Device = "auto",
) -> None:
    """The whole product on built-in data: index and dedup with the built-in model, then train, evaluate, query."""
    from ..demo import run_demo  # needs the demo extra (scikit-learn, scikit-image, matplotlib)

    s = run_demo(out, minutes, observer=TrainProgress(), runtime=Runtime(device=device, workers=0))
    console.print(f"demo finished in {s.minutes:.1f} min")
    console.print("dedup of planted photo copies (built-in model): " + "  ".join(f"{k} {v}" for k, v in s.dedup.items()))
    console.print("digits model, held-out images: " + "  ".join(
        f"{k} {fmt(s.eval_metrics[k])}" for k in ("precision_at_1", "map_at_r", "roc_auc", "one_shot")
        if k in s.eval_metrics) + f"  query neighbour accuracy {s.query_accuracy:.3f}")
    for note in s.notes:
        console.print(f"note: {note}")
    for name, path in s.files.items():
        console.print(f"{name}: {shown(path)}")
