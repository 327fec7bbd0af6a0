"""siamsearch.cluster on one local Ray gives what the single-machine code gives: vectors, index lists, pairs.

All Ray work runs once, in tests/cluster_worker.py, inside a network namespace with loopback alone (one local
Ray: 2 CPUs, a small object store, no dashboard); the tests here compare what it wrote with the single-process
oracles, computed in this process while it runs; an unreachable --address is tried in such a namespace too.
Skipped with the reason when the cluster extra is missing or `unshare -n` is not possible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import in_loopback_namespace, loopback_only, make_identities, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_without_the_extra_each_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    res = run_cli("cluster", "dedup", "somewhere", "--out", "out", "--margin", "0.1")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: the cluster commands need Ray and pyarrow (ray is missing): "
                                               "pip install 'siamsearch[cluster]'"]


def loopback_ray() -> None:
    """Skip, with the reason, where the cluster extra is missing or a loopback-only namespace cannot be made."""
    pytest.importorskip("ray.data", reason="the cluster extra is not installed: pip install 'siamsearch[cluster]'")
    pytest.importorskip("pyarrow", reason="the cluster extra is not installed: pip install 'siamsearch[cluster]'")
    reason = loopback_only()
    if reason:
        pytest.skip(f"the Ray tests keep to loopback in their own network namespace; {reason}")


def test_importing_the_cli_imports_neither_ray_nor_pyarrow():
    code = "import sys, siamsearch.cli.app; print(sorted({'ray', 'pyarrow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the worker filled: embeddings, indexes and pairs (module-wide: Ray starts once)."""
    loopback_ray()
    import torch
    from cluster_worker import UNREACHABLE

    from siamsearch.core.checkpoint import save_model
    from siamsearch.core.config import EncoderConfig
    from siamsearch.core.model import build_encoder

    folder = tmp_path_factory.mktemp("cluster")
    make_identities(folder / "images", n_ids=6, per_id=5, size=32)
    (folder / "images" / "broken.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    save_model(folder / "model.pt", build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": UNREACHABLE}
    worker = subprocess.Popen(in_loopback_namespace([sys.executable, str(ROOT / "tests" / "cluster_worker.py"),
                                                     str(folder)]), cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    oracle = planted_pairs()  # the single-process search runs while Ray does its part
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, output[-5000:]
    np.savez(folder / "oracle.npz", *oracle)
    return folder


def planted_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Today's find_pairs over the worker's 200,000 planted vectors, in one exact flat index."""
    from cluster_worker import DEDUP_DIM, DEDUP_N, DEDUP_SHARDS, MARGIN, planted, synthetic_ids

    from siamsearch.duplicates.closepairs import find_pairs
    from siamsearch.cluster.cells import CellStore

    return find_pairs(CellStore(synthetic_ids(DEDUP_N, DEDUP_SHARDS), planted(DEDUP_N, DEDUP_DIM)), MARGIN)


@pytest.fixture(scope="module")
def results(work: Path) -> dict:
    """The run summaries the worker wrote."""
    return json.loads((work / "results.json").read_text())


def stored(folder: Path) -> dict[str, tuple[int, np.ndarray]]:
    """path → (id, vector) over every part of every shard of an embeddings folder (asserting each id once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from siamsearch.cluster import shards

    table = pa.concat_tables([pq.read_table(p) for p in sorted((folder / shards.VECTORS).rglob("part-*.parquet"))])
    table = table.filter(pa.compute.equal(table["error"], ""))
    ids, vectors = shards.vectors_of(table)
    assert len(np.unique(ids)) == len(ids), "an id was written twice"
    return {p: (i, v) for p, i, v in zip(table["path"].to_pylist(), ids.tolist(), vectors)}


def test_embeddings_through_ray_equal_embed_paths(work):
    from siamsearch.core.checkpoint import load_encoder
    from siamsearch.core.embed import embed_paths

    model, ckpt = load_encoder(work / "model.pt")
    paths = sorted((work / "images").rglob("*.png"))
    want = embed_paths(model, ckpt.preprocess, paths, workers=0)
    got = stored(work / "embeddings")
    assert sorted(got) == sorted(p.relative_to(work / "images").as_posix() for p in want.paths)
    worst = max(np.abs(got[p.relative_to(work / "images").as_posix()][1] - v).max()
                for p, v in zip(want.paths, want.vectors))
    print(f"largest difference from embed_paths: {worst:.2e}")
    assert worst < 1e-5


def test_a_killed_worker_and_a_rerun_give_the_same_ids_each_once(work, results):
    import pyarrow.parquet as pq
    from cluster_worker import KILLED_SHARD, SHARD_SIZE

    from siamsearch.cluster import shards

    first, second, third = results["embed"]
    assert (work / "killed").exists()  # the encoder actor did die mid-job; Ray restarted it and retried
    assert [f["path"].endswith("broken.png") for f in first["failures"]] == [True]
    assert first["embedded"] == 30 and first["shards"] == 5 and first["skipped_shards"] == 0
    assert (second["skipped_shards"], second["embedded"]) == (4, SHARD_SIZE)  # only the unfinished shard again
    assert (third["skipped_shards"], third["embedded"]) == (5, 0)
    got = stored(work / "embeddings")
    inputs = {}  # path → (input shard, row), as planned by the first run
    for s in range(5):
        table = pq.read_table(shards.inputs_file(work / "embeddings", s)).to_pydict()
        inputs.update((p, (s, r)) for p, r in zip(table["path"], table["row"]))
    assert {p: i for p, (i, _) in got.items()} == {p: int(shards.make_ids(*inputs[p])) for p in got}
    assert KILLED_SHARD in {int(i) >> shards.ROW_BITS for i, _ in got.values()}


def test_the_cluster_commands_run_and_end_with_a_json_summary(work, results):
    embed, index, dedup = (results["cli"][name] for name in ("embed", "index", "dedup"))
    assert [embed["exit_code"], index["exit_code"], dedup["exit_code"]] == [0, 0, 0], results["cli"]
    assert (embed["summary"]["skipped_shards"], embed["summary"]["embedded"]) == (5, 0)  # all done before
    assert index["summary"]["count"] == 30 and (work / "cli_index" / "index.ivfdata").exists()
    assert dedup["summary"]["mode"] == "approximate (probe 1)" and dedup["summary"]["pair_recall"] is not None
    assert len(json.loads((work / "cli_dedup" / "groups.json").read_text())) == dedup["summary"]["groups"]


def invlist_triples(index: faiss.Index) -> set[tuple[int, int, bytes]]:
    """Every (list, id, code bytes) an IVF index holds."""
    ivf = faiss.extract_index_ivf(index)
    lists, out = ivf.invlists, set()
    for n in range(ivf.nlist):
        size = lists.list_size(n)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(n), size).copy()
            codes = faiss.rev_swig_ptr(lists.get_codes(n), size * lists.code_size).copy().reshape(size, -1)
            out.update((n, int(i), c.tobytes()) for i, c in zip(ids, codes))
    return out


def one_add(merged: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """An in-memory IVF with the merged index's trained quantizer, every vector added at once."""
    ivf = faiss.extract_index_ivf(merged)
    quantizer = faiss.IndexFlatL2(ivf.d)
    quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    index = faiss.IndexIVFFlat(quantizer, ivf.d, ivf.nlist)
    index.add_with_ids(vectors, ids)
    index.nprobe = ivf.nprobe
    return index


def test_sharded_adds_merged_on_disk_hold_the_same_lists_as_one_add_and_answer_the_same(work, results):
    from cluster_worker import INDEX_DIM, INDEX_N, INDEX_SHARDS, synthetic_ids, unit

    from siamsearch.index.store import Store

    ids, vectors = synthetic_ids(INDEX_N, INDEX_SHARDS), unit(np.random.default_rng(1).standard_normal((INDEX_N,
                                                                                                       INDEX_DIM)))
    with Store.open(work / "index") as store:  # today's reader: mmap'ed lists, rows in SQLite
        merged = store._index
        reference = one_add(merged, ids, vectors)
        assert len(store) == INDEX_N and store.kind == "ivf" and (work / "index" / "index.ivfdata").exists()
        assert invlist_triples(merged) == invlist_triples(reference)
        queries = unit(np.random.default_rng(2).standard_normal((200, INDEX_DIM)))
        distances, found = store.search(queries, 10)
        assert (found == reference.search(queries, 10)[1]).all()
        assert store.rows(found[0])[0].path.startswith("img/")
    assert results["index"]["search"]["recall"] >= 0.95


def test_query_opens_a_cluster_index_unchanged(work):
    image = work / "images" / "id03" / "2.png"
    res = run_cli("query", image, "--index", work / "image_index", "-k", 3, "--json")
    assert res.exit_code == 0, res.output
    top = json.loads(res.output)[0]["neighbors"][0]
    assert top["path"] == "id03/2.png" and top["distance"] < 1e-3


def test_a_cluster_index_refuses_in_one_line_what_its_lists_on_disk_cannot_do(work):
    res = run_cli("dedup", "--index", work / "image_index", "--margin", 0.1)
    assert res.exit_code == 2 and "run `siamsearch cluster dedup` on its embeddings" in res.output
    res = run_cli("index", work / "images", "--index", work / "image_index")
    assert res.exit_code == 2 and "build it again with `siamsearch cluster index`" in res.output


def test_cell_dedup_finds_exactly_the_pairs_of_find_pairs_and_reports_the_approximate_recall(work, results):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from siamsearch.duplicates.closepairs import unique_pairs

    oracle = np.load(work / "oracle.npz")
    want_i, want_j, want_d = (oracle[f"arr_{n}"] for n in range(3))

    def pairs(name: str):
        table = pa.concat_tables([pq.read_table(p) for p in sorted((work / name / "pairs").glob("*.parquet"))])
        return unique_pairs(*(table[c].to_numpy() for c in ("i", "j", "d")))

    i, j, d = pairs("exact")
    assert len(want_i) > 1000 and results["exact"]["pairs"] == len(want_i)
    assert (i == want_i).all() and (j == want_j).all() and np.abs(d - want_d).max() < 1e-5
    a_i, a_j, _ = pairs("approximate")
    truth = set(zip(want_i.tolist(), want_j.tolist()))
    found = set(zip(a_i.tolist(), a_j.tolist()))
    assert found <= truth
    recall = len(found) / len(truth)
    print(f"exact: {len(i)} pairs ({results['exact']['copies_per_vector']} copies a vector over "
          f"{results['exact']['cells']} cells); approximate (probe 1): pair recall {recall:.4f} over all pairs, "
          f"{results['approximate']['pair_recall']:.4f} measured by the run on the "
          f"{results['approximate']['recall_pairs']} true pairs of 1,000 sampled queries")
    assert 0.5 < recall < 1 and 0.5 < results["approximate"]["pair_recall"] <= 1


def test_without_an_address_a_local_ray_is_started_whatever_ray_address_says(results):
    from cluster_worker import UNREACHABLE

    assert results["ray"]["RAY_ADDRESS"] == UNREACHABLE and results["ray"]["joined"] != UNREACHABLE


def test_an_unreachable_address_fails_in_one_line_within_seconds(tmp_path):
    loopback_ray()
    from cluster_worker import UNREACHABLE

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.monotonic()
    done = subprocess.run(in_loopback_namespace([sys.executable, "-m", "siamsearch", "cluster", "index", "emb",
                                                 "--index", "out", "--address", UNREACHABLE]),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert done.returncode == 2 and took < 30, (took, done.stderr[-2000:])
    assert done.stderr.strip().splitlines() == [f"error: no Ray cluster answers at {UNREACHABLE} (Connection refused "
                                                "within 5 s); start one there with `ray start --head`, or leave out "
                                                "--address to start a local one"]


def test_a_second_dedup_into_its_out_replaces_the_first_and_other_folders_are_refused(work, results):
    wide, narrow, fresh = (results["cli"][name] for name in ("wide", "narrow", "fresh"))
    assert [wide["exit_code"], narrow["exit_code"], fresh["exit_code"]] == [0, 0, 0], results["cli"]
    assert wide["summary"]["pairs"] > narrow["summary"]["pairs"] == fresh["summary"]["pairs"]
    assert wide["summary"]["buckets"] > narrow["summary"]["buckets"]  # the first run's extra parts are gone
    assert (json.loads((work / "redo" / "groups.json").read_text())
            == json.loads((work / "fresh" / "groups.json").read_text()))
    for name in ("dedup_other_embeddings", "dedup_into_embeddings"):
        refused = results["refused"][name]
        assert refused["exit_code"] == 3 and len(refused["summary"].strip().splitlines()) == 1, refused
    assert "other embeddings" in results["refused"]["dedup_other_embeddings"]["summary"]


def test_an_interrupted_build_of_other_embeddings_is_started_over_and_one_of_the_same_resumed(results):
    from cluster_worker import INDEX_N, INDEX_SHARDS

    assert results["interrupted_blocks"] == INDEX_SHARDS  # none of the other collection's blocks was taken
    assert results["index"]["count"] == INDEX_N and results["index"]["reused_blocks"] == INDEX_SHARDS


def test_cluster_index_refuses_a_folder_it_did_not_make_and_rebuilds_its_own(work, results):
    for name in ("index_into_embeddings", "index_into_pairs"):
        refused = results["refused"][name]
        assert refused["exit_code"] == 3 and len(refused["summary"].strip().splitlines()) == 1, refused
        assert "not made by `siamsearch cluster index`" in refused["summary"]
    assert (work / "embeddings" / "manifest.json").is_file() and not (work / "embeddings" / "blocks").exists()
    assert results["cli"]["index_again"]["exit_code"] == 0 and results["cli"]["index_again"]["summary"]["count"] == 30
