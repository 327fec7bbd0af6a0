"""An index moved with its folder (and its model) answers queries after relocate, with nothing embedded again."""

import json
import shutil

from conftest import make_identities
from conftest import run_cli as run

import siamsearch.core.embed as embed_mod


def count_embedded(monkeypatch) -> list[int]:
    """The size of every batch the encoder embeds, in order."""
    real, sizes = embed_mod.forward, []

    def counting(model, batch, *args, **kwargs):
        sizes.append(len(batch))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(embed_mod, "forward", counting)  # every batch goes through it
    return sizes


def indexed_library(tmp_path, photos, model_file):
    """lib/photos, lib/m.pt and its index lib/indexes/photos, built with the CLI."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.move(photos, lib / "photos")
    shutil.move(model_file, lib / "m.pt")
    res = run("index", lib / "photos", "--model", lib / "m.pt", "--index", lib / "indexes/photos", "--workers", 0)
    assert res.exit_code == 0, res.output
    return lib


def test_an_index_moved_with_its_folder_and_model_answers_after_relocate_with_no_embedding(tmp_path, photos,
                                                                                          model_file, monkeypatch):
    moved = tmp_path / "elsewhere/lib"
    moved.parent.mkdir()
    indexed_library(tmp_path, photos, model_file).rename(moved)  # mv: names, sizes and mtimes kept
    idx, embedded = moved / "indexes/photos", count_embedded(monkeypatch)
    res = run("index", moved / "photos", "--index", idx)
    assert res.exit_code == 2 and "siamsearch relocate" in res.stderr  # the old root is pinned until re-pointed

    res = run("relocate", "--index", idx, moved / "photos", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["sampled"], out["matched"], out["hashed"]) == (9, 9, 9) and out["root"] == str(moved / "photos")
    assert out["model"] == str(moved / "m.pt") and out["old_root"] == str(tmp_path / "lib/photos")
    info = json.loads(run("info", "--index", idx, "--json").stdout)
    assert (info["root"], info["model"]) == (str(moved / "photos"), str(moved / "m.pt"))

    res = run("index", moved / "photos", "--index", idx, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["unchanged"], out["added"], out["updated"], out["removed"], out["embedded"]) == (9, 0, 0, 0, 0)
    assert embedded == []  # relocating and the index run after it embedded nothing

    res = run("query", "--index", idx, moved / "photos/id01/2.png", "-k", 1, "--exclude-self", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)[0]["neighbors"]) == 1 and embedded == [1]  # the query image alone
    res = run("query", "--index", idx, moved / "photos/id01/2.png", "-k", 1, "--json")
    nearest = json.loads(res.stdout)[0]["neighbors"][0]
    assert (nearest["path"], nearest["identity"]) == ("id01/2.png", "id01") and nearest["distance"] < 1e-3


def test_relocate_refuses_a_folder_that_does_not_hold_the_indexed_files(tmp_path, photos, model_file):
    lib = indexed_library(tmp_path, photos, model_file)
    other = make_identities(tmp_path / "other", n_ids=3, per_id=3, size=8, seed=1)  # the same names, not the files
    before = (lib / "indexes/photos/manifest.json").read_text()
    res = run("relocate", "--index", lib / "indexes/photos", other)
    assert res.exit_code == 3 and "0 of 9 sampled files match" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and (lib / "indexes/photos/manifest.json").read_text() == before
    (lib / "photos/id00/0.png").unlink()  # one file in nine gone since the index run: under the 90 % it needs
    res = run("relocate", "--index", lib / "indexes/photos", lib / "photos")
    assert res.exit_code == 3 and "8 of 9 sampled files match (id00/0.png: missing)" in res.stderr, res.output


def test_a_moved_model_is_found_by_fingerprint_next_to_the_index(tmp_path, photos, model_file):
    lib = indexed_library(tmp_path, photos, model_file)
    (lib / "m.pt").rename(lib / "indexes/renamed.pt")
    (lib / "indexes/aaa.pt").write_bytes(b"not a model")  # looked at first, and passed over
    res = run("query", "--index", lib / "indexes/photos", lib / "photos/id00/1.png", "-k", 2, "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)[0]["neighbors"]) == 2, res.output
    (lib / "indexes/renamed.pt").unlink()
    res = run("query", "--index", lib / "indexes/photos", lib / "photos/id00/1.png")
    assert res.exit_code == 2 and "neither where its manifest says nor next to the index; pass --model" in res.stderr
    res = run("relocate", "--index", lib / "indexes/photos", lib / "photos", "--model", tmp_path / "nothing.pt")
    assert res.exit_code == 2 and "no model file" in res.stderr, res.output


def test_relocate_refuses_a_copy_while_the_indexed_folder_is_still_there(tmp_path, photos, model_file):
    import shutil

    lib = indexed_library(tmp_path, photos, model_file)
    copy = tmp_path / "copy"
    shutil.copytree(lib / "photos", copy, copy_function=shutil.copy2)  # same bytes, sizes and times
    before = (lib / "indexes/photos/manifest.json").read_text()
    res = run("relocate", "--index", lib / "indexes/photos", copy)
    assert res.exit_code == 3 and "still holds the files" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and (lib / "indexes/photos/manifest.json").read_text() == before
    shutil.rmtree(lib / "photos")  # now it is a move
    assert run("relocate", "--index", lib / "indexes/photos", copy).exit_code == 0
