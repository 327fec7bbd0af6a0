"""query reads its paths from a list file or stdin: one per line or NUL-separated, odd names intact."""

import json
import shutil
import subprocess

from typer.testing import CliRunner

from siamsearch.cli.app import app
from siamsearch.commands import listed_paths
from siamsearch.index.indexing import index_folder


def test_lines_and_nul_lists_skip_empty_entries_and_keep_spaces():
    assert [str(p) for p in listed_paths(b"a b.png\r\n\n  c.png\n")] == ["a b.png", "  c.png"]
    assert [str(p) for p in listed_paths("x\ny.png\0\0ü.png\0".encode(), nul=True)] == ["x\ny.png", "ü.png"]


def test_query_paths_from_stdin_a_list_file_and_find_print0(identity_dir, model_file, tmp_path):
    idx = tmp_path / "idx"
    index_folder(identity_dir, idx, model_file)
    queries = tmp_path / "queries"
    queries.mkdir()
    names = ["with space.png", "ünïcødé ✓.png"]
    for name, source in zip(names, ["id01/0.png", "id02/0.png"]):
        shutil.copy(identity_dir / source, queries / name)
    paths = [str(queries / n) for n in names]

    def asked(args: list[str], stdin: bytes | None = None) -> list[str]:
        res = CliRunner().invoke(app, ["query", "--index", str(idx), "-k", "1", "--json", *args], input=stdin)
        assert res.exit_code == 0, res.output
        return sorted(q["query"] for q in json.loads(res.stdout))

    assert asked(["-"], ("\n".join(paths) + "\n\n").encode()) == sorted(paths)
    listing = tmp_path / "list.txt"
    listing.write_text("\n" + paths[0] + "\n", encoding="utf-8")
    assert asked(["--from-file", str(listing), paths[1]]) == sorted(paths)
    found = subprocess.run(["find", str(queries), "-name", "*.png", "-print0"], capture_output=True, check=True).stdout
    assert asked(["-0", "-"], found) == sorted(paths)
    (tmp_path / "found.bin").write_bytes(found)
    assert asked(["-0", "--from-file", str(tmp_path / "found.bin")]) == sorted(paths)


def test_no_query_paths_is_a_one_line_error(identity_dir, model_file, tmp_path):
    index_folder(identity_dir, tmp_path / "idx", model_file)
    res = CliRunner().invoke(app, ["query", "--index", str(tmp_path / "idx"), "-"], input=b"\n\n")
    assert res.exit_code == 2 and "no query images" in res.stderr
