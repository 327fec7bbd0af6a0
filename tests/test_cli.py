"""Exit codes and output a script can rely on: 0 done, 1 files skipped, 2 usage, 3 refused, 4 a bug."""

import json

import pytest
from conftest import add_bad_files
from conftest import run_cli as run

from siamsearch import commands
from siamsearch.indexing import index_folder


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
