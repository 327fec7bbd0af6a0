"""Exit codes and output a script can rely on: 0 done, 1 files skipped, 2 usage, 3 refused, 4 a bug."""

import json

import pytest
from conftest import add_bad_files
from conftest import run_cli as run

from siamsearch import commands
from siamsearch.index.indexing import index_folder


def test_a_clean_run_exits_0_and_skipped_files_make_it_1(identity_dir, model_file, tmp_path):
    res = run("index", identity_dir, "--model", model_file, "--index", tmp_path / "a", "--workers", 0)
    assert res.exit_code == 0, res.output
    add_bad_files(identity_dir)
    res = run("index", identity_dir, "--model", model_file, "--index", tmp_path / "b", "--workers", 0)
    assert res.exit_code == 1 and "skipped 3" in res.output


def test_usage_errors_exit_2_and_refusals_exit_3_in_one_line(identity_dir, model_file, tmp_path):
    res = run("info", "--index", tmp_path / "nothing")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    dest = identity_dir / "dups"  # inside the indexed folder: refused, nothing moves
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    res = run("dedup", "--index", tmp_path / "idx", "--margin", 0.5, "--move-to", dest, "--yes")
    assert res.exit_code == 3 and "inside the indexed folder" in res.stderr and not dest.exists()


def test_a_bug_exits_4_in_one_line_without_a_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(commands, "Store", type("Broken", (), {"open": staticmethod(broken)}))
    res = run("info", "--index", tmp_path)
    assert res.exit_code == 4 and "internal error" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_quiet_prints_only_json_and_errors(identity_dir, model_file, tmp_path, json_flag):
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    res = run("--quiet", "dedup", "--index", tmp_path / "idx", "--margin", 0.3, *json_flag)
    assert res.exit_code == 0
    assert (json.loads(res.stdout)["margin"] == 0.3) if json_flag else res.stdout == ""
    res = run("--quiet", "info", "--index", tmp_path / "missing")
    assert res.exit_code == 2 and "error:" in res.stderr


def test_out_of_range_numbers_are_usage_errors_not_tracebacks(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)[0].close()
    query = identity_dir / "id00" / "0.png"
    huge = run("query", query, "--index", idx, "-k", 10_000_000_000, "--json")
    assert huge.exit_code == 0 and len(json.loads(huge.stdout)[0]["neighbors"]) == 96  # clamped to the index
    for args in (["query", query, "--index", idx, "-k", 0], ["query", query, "--index", idx, "-k", -1],
                 ["query", query, "--index", idx, "--margin", 5],
                 ["dedup", "--index", idx, "--margin", 5], ["dedup", "--index", idx, "--margin", "inf"],
                 ["dedup", "--index", idx, "--margin", 0.5, "--review-margin", 0.2],
                 ["dedup", "--index", idx, "--margin", 0.5, "--linkage", "chain"],
                 ["dedup", "--index", idx, "--margin", 0.5, "--keep", "biggest"],
                 ["eval", identity_dir, "--model", model_file, "--episodes", 0],
                 ["eval", identity_dir, "--model", model_file, "--ways", 1],
                 ["calibrate", identity_dir, "--model", model_file, "--target-precision", 2]):
        res = run(*args)
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, (args, res.output)


def test_a_query_folder_without_images_says_so(identity_dir, model_file, tmp_path):
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    (tmp_path / "empty").mkdir()
    res = run("query", tmp_path / "empty", "--index", tmp_path / "idx")
    assert res.exit_code == 2 and "no images found" in res.stderr


def test_undo_and_calibrate_summaries_in_json(identity_dir, model_file, tmp_path):
    res = run("calibrate", identity_dir, "--model", model_file, "--workers", 0, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["pairs"] > 0
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    moved = run("dedup", "--index", tmp_path / "idx", "--margin", 0.6, "--move-to", tmp_path / "dups", "--yes",
                "--json")
    assert moved.exit_code == 0, moved.output
    moves = json.loads(moved.stdout)["moves"]
    assert moves["done"] and not moves["dry_run"]
    res = run("undo", moves["manifest"], "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["done"] == moves["done"]


def test_index_and_train_summaries_in_json(identity_dir, model_file, tmp_path):
    res = run("index", identity_dir, "--model", model_file, "--index", tmp_path / "idx", "--workers", 0, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["count"], data["added"], data["failures"]) == (96, 96, [])
    res = run("train", identity_dir, "--out", tmp_path / "new.pt", "--epochs", 1, "--image-size", 32, "--dim", 16,
              "-P", 4, "-K", 2, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["out"] == str(tmp_path / "new.pt") and summary["best"]["epoch"] == 1 and summary["fingerprint"]


def names_index(identity_dir, model_file, tmp_path) -> tuple:
    """An index where three copies of one image carry hostile names: markup, a markup closer, a newline."""
    original = identity_dir / "id00" / "0.png"
    names = ["[red]x.png", "x[/]y.png", "new\nline.png", "=HYPERLINK(1).png"]  # x[/]y.png: folder "x[", file "]y.png"
    for name in names:
        (identity_dir / "id00" / name).parent.mkdir(exist_ok=True)
        (identity_dir / "id00" / name).write_bytes(original.read_bytes())
    index_folder(identity_dir, tmp_path / "idx", model_file)[0].close()
    return tmp_path / "idx", names


def test_file_names_print_as_they_are_never_as_markup_or_forged_lines(identity_dir, model_file, tmp_path):
    idx, names = names_index(identity_dir, model_file, tmp_path)
    res = run("dedup", "--index", idx, "--margin", 0.001, "--move-to", tmp_path / "dups")  # the dry-run list
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "id00/[red]x.png" in res.stdout and "id00/x[/]y.png" in res.stdout and "id00/new\\nline.png" in res.stdout
    assert not any(line.startswith("line.png") for line in res.stdout.splitlines())


def test_csv_cells_cannot_become_formulas(identity_dir, model_file, tmp_path):
    idx, _ = names_index(identity_dir, model_file, tmp_path)
    res = run("dedup", "--index", idx, "--margin", 0.001, "--csv", tmp_path / "d.csv")
    assert res.exit_code == 0, res.output
    cells = [c for line in (tmp_path / "d.csv").read_text().splitlines() for c in line.split(",")]
    assert "'id00/=HYPERLINK(1).png" not in cells and not any(c.startswith(("=", "+", "@")) for c in cells)
    assert any("=HYPERLINK(1).png" in c for c in cells)


def test_reports_come_before_moves_so_a_failing_one_moves_nothing(identity_dir, model_file, tmp_path):
    idx, _ = names_index(identity_dir, model_file, tmp_path)
    res = run("dedup", "--index", idx, "--margin", 0.001, "--move-to", tmp_path / "dups", "--yes",
              "--csv", tmp_path / "missing" / "d.csv")
    assert res.exit_code == 2 and not (tmp_path / "dups").exists()
    res = run("dedup", "--index", idx, "--margin", 0.001, "--move-to", tmp_path / "dups", "--yes",
              "--html", tmp_path / "d.html")
    assert res.exit_code == 0 and "undo with: siamsearch undo" in res.stdout
    assert "file not found" not in (tmp_path / "d.html").read_text()  # drawn while every file was in place


def all_commands(command, path=()):
    """(path, command) of every command and group under command, itself first."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from all_commands(sub, (*path, name))


def test_every_help_keeps_the_bracketed_words_its_source_holds():
    import re

    import typer
    from typer.testing import CliRunner

    from siamsearch.cli.app import app

    root = typer.main.get_command(app)
    for path, command in all_commands(root):
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for word in (w for text in texts for w in re.findall(r"\w+\[\w+\]", text.replace("\\[", "["))):
            assert word in out, (path, word)
    assert "siamsearch[cluster]" in CliRunner().invoke(app, ["cluster", "--help"], env={"COLUMNS": "400"}).output
