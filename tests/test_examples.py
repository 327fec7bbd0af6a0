"""The examples in examples/ run against the current API."""

import runpy
import sys
from pathlib import Path

from siamsearch.core.config import Runtime
from siamsearch.evaluate import calibrate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_find_duplicates_example(identity_dir, model_file, tmp_path, monkeypatch, capsys):
    calibrate(identity_dir, model_file, runtime=Runtime(workers=0))  # dedup's default margin comes from the calibration
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["find_duplicates.py", str(identity_dir), "--model", str(model_file),
                                      str(identity_dir / "id05" / "1.png")])
    runpy.run_path(str(EXAMPLES / "find_duplicates.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("96 images; added 96")
    assert out[1].split() == ["1", "0.000", "id05/1.png"]
    assert (tmp_path / "indexes" / identity_dir.name / "manifest.json").is_file()
