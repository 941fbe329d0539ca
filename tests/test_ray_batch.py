"""`cnnrt batch` on a local Ray cluster (ray.init(num_cpus=2), one per module: Ray takes seconds
to start). Every input row must give exactly one output row, equal to an offline run of the same
model; a killed actor and a deleted shard must not change that."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from cnnrt.batch import run_batch  # noqa: E402
from cnnrt.errors import CnnrtError, FormatError  # noqa: E402
from cnnrt.idx import write_idx  # noqa: E402

from ray_helpers import MODEL, ROOT, DiesOnce, check_exact, fresh_images, offline, read_output, ship_by_value  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ship_by_value()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def idx_input(tmp_path, rng, mnist_test):
    x = fresh_images(rng, mnist_test[0], 1000)
    path = tmp_path / "in-images-idx3-ubyte"
    write_idx(path, x)
    return path, x


def test_every_row_once_and_as_offline(cluster, idx_input, tmp_path):
    src, x = idx_input
    s = run_batch(src, tmp_path / "out", MODEL, backend="numpy", shard_size=300, batch_size=128, num_actors=1)
    assert (s["shards_total"], s["shards_written"], s["shards_skipped"], s["rows"]) == (4, 4, 0, 1000)
    assert (s["backend"], s["precision"], s["actors"]) == ("numpy", "fp32", 1)
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == [f"part-{k:06d}.parquet" for k in range(4)]
    out = read_output(tmp_path / "out")
    check_exact(out, offline(x))
    order = np.argsort(out["id"])
    assert set(out["file"]) == {src.name} and np.array_equal(out["row"][order], np.arange(1000))
    assert 0 < s["mean_batch_rows"] <= 128 and s["inference_batches"] >= 1000 / 128


def test_killed_actor_loses_and_duplicates_nothing(cluster, idx_input, tmp_path):
    src, x = idx_input
    marker = tmp_path / "died"
    s = run_batch(src, tmp_path / "out", MODEL, backend="numpy", shard_size=250, batch_size=100, num_actors=1,
                  predictor=DiesOnce, predictor_kwargs={"marker": str(marker), "after": 3})
    assert marker.exists(), "the fault was not injected: the actor never reached its third batch"
    assert s["shards_written"] == 4 and s["rows"] == 1000
    check_exact(read_output(tmp_path / "out"), offline(x))


def test_resume_recomputes_only_the_missing_shard(cluster, idx_input, tmp_path):
    src, x = idx_input
    dest = tmp_path / "out"
    run_batch(src, dest, MODEL, backend="numpy", shard_size=300, batch_size=300, num_actors=1)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.glob("part-*")}
    (dest / "part-000002.parquet").unlink()
    (dest / ".part-000001.parquet.999999999.tmp").write_bytes(b"a temporary file left by a dead run")
    s = run_batch(src, dest, MODEL, backend="numpy", shard_size=300, batch_size=300, num_actors=1)
    assert (s["shards_written"], s["shards_skipped"], s["rows"]) == (1, 3, 300)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.glob("part-*")}
    assert set(after) == set(before)
    assert all(after[k] == before[k] for k in before if k != "part-000002.parquet"), "a finished shard was rewritten"
    assert not list(dest.glob(".*.tmp"))
    check_exact(read_output(dest), offline(x))
    again = run_batch(src, dest, MODEL, backend="numpy", shard_size=300)  # all done: Ray is not even needed
    assert (again["shards_written"], again["shards_skipped"], again["backend"]) == (0, 4, "numpy")
    with pytest.raises(CnnrtError, match="shard_size: was 300, now 200"):
        run_batch(src, dest, MODEL, backend="numpy", shard_size=200)
    with pytest.raises(CnnrtError, match="precision: was 'fp32', now 'fp16'"):
        (dest / "part-000000.parquet").unlink()
        run_batch(src, dest, MODEL, backend="numpy", precision="fp16", shard_size=300, num_actors=1)


def test_numpy_shards_parquet_and_image_files(cluster, tmp_path, rng, mnist_test):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from cnnrt import images

    x = fresh_images(rng, mnist_test[0], 700)
    # NumPy shards: uint8 (N, 28, 28) and float 0..1 (N, 28, 28, 1), in subfolders, sorted by path
    (tmp_path / "npy" / "b").mkdir(parents=True)
    np.save(tmp_path / "npy" / "a.npy", x[:250])
    np.save(tmp_path / "npy" / "b" / "c.npy", (x[250:400, ..., None] / 255.0).astype(np.float32))
    # Parquet, one "image" column typed three ways: raw pixel bytes (several row groups), lists of
    # 784 integers, PNG-encoded bytes (MNIST-preprocessed, as image files are)
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image": [v.tobytes() for v in x[400:500]]}), tmp_path / "pq" / "1.parquet", row_group_size=30)
    pq.write_table(pa.table({"image": pa.array(x[500:600].reshape(100, -1).astype(np.int32).tolist(),
                                                 pa.list_(pa.int32(), 784)), "other": list(range(100))}),
                   tmp_path / "pq" / "2.parquet")
    pngs = []
    for v in x[600:650]:
        b = io.BytesIO()
        Image.fromarray(v).save(b, format="PNG")
        pngs.append(b.getvalue())
    pq.write_table(pa.table({"image": pngs}), tmp_path / "pq" / "3.parquet")
    # image files: 50 PNGs, digits drawn black on white as a person would, MNIST-preprocessed
    (tmp_path / "png").mkdir()
    for i, v in enumerate(x[650:700]):
        Image.fromarray(255 - v).save(tmp_path / "png" / f"{i:03d}.png")

    s = run_batch(tmp_path / "npy", tmp_path / "o1", MODEL, backend="numpy", shard_size=100)  # default actors
    assert (s["format"], s["shards_total"], s["rows"]) == ("npy", 5, 400)
    assert (s["actors"], s["cpus_per_actor"]) == (1, 1.0)  # one node of 2 CPUs: one actor, one CPU left to read
    out = read_output(tmp_path / "o1")
    check_exact(out, np.concatenate([offline(x[:250]), offline(x[250:400, ..., None] / np.float32(255.0))]))
    order = np.argsort(out["id"])
    assert list(out["file"][order][[0, 249, 250]]) == ["a.npy", "a.npy", "b/c.npy"]
    assert list(out["row"][order][[0, 249, 250, 399]]) == [0, 249, 0, 149]

    s = run_batch(tmp_path / "pq", tmp_path / "o2", MODEL, backend="numpy", shard_size=45, num_actors=1)
    assert (s["format"], s["shards_total"], s["rows"]) == ("parquet", 3 + 3 + 2, 250)
    recipe = [images.mnist_digit(images.Picture("png", v[..., None].astype(np.float32))) for v in x[600:650]]
    check_exact(read_output(tmp_path / "o2"), offline(np.concatenate([x[400:600], np.stack(recipe)])))

    s = run_batch(tmp_path / "png", tmp_path / "o4", MODEL, backend="numpy", shard_size=20, num_actors=1)
    assert (s["format"], s["shards_total"]) == ("images", 3)
    out = read_output(tmp_path / "o4")
    ref = np.stack([images.preprocess(images.read_pictures(tmp_path / "png" / f"{i:03d}.png")[0], (28, 28, 1), "mnist")
                    for i in range(50)])
    check_exact(out, offline(ref))
    assert list(out["file"][np.argsort(out["id"])][:2]) == ["000.png", "001.png"]


def test_bad_inputs_are_refused_with_the_file_named(tmp_path, rng):
    """No Ray needed: inputs are checked while planning, before any cluster is joined."""
    bad = tmp_path / "short-images-idx3-ubyte"
    write_idx(bad, rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(FormatError, match=f"{bad}: the header promises 7840 data bytes"):
        run_batch(bad, tmp_path / "o", MODEL)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(FormatError, match=r"wrong.npy: images of shape \(32, 32\), but the model takes"):
        run_batch(wrong, tmp_path / "o", MODEL)
    objs = tmp_path / "objs.npy"
    np.save(objs, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="objs.npy: holds Python objects"):
        run_batch(objs, tmp_path / "o", MODEL)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    with pytest.raises(FormatError, match="t.parquet: no column 'image' .*pass --column"):
        run_batch(tmp_path / "t.parquet", tmp_path / "o", MODEL)


def test_actor_plan():
    """Pure arithmetic, no Ray: one CPU actor per node with all its CPUs but one; one per GPU."""
    from cnnrt.ray import plan_actors

    assert plan_actors("numpy", None, None, {"CPU": 2, "GPU": 0, "node_cpus": [2]}) == (1, 1.0, 0.0)
    assert plan_actors("numpy", None, None, {"CPU": 64, "GPU": 0, "node_cpus": [16] * 4}) == (4, 15.0, 0.0)
    assert plan_actors("numpy", None, None, {"CPU": 1, "GPU": 0, "node_cpus": [1]}) == (1, 0.5, 0.0)
    assert plan_actors("numpy", 3, None, {"CPU": 4, "GPU": 0, "node_cpus": [2, 2]}) == (3, 1.0, 0.0)
    assert plan_actors("cuda", None, None, {"CPU": 32, "GPU": 2, "node_cpus": [32]}) == (2, 1.0, 1.0)
    with pytest.raises(CnnrtError, match="leave less than half a CPU"):
        plan_actors("numpy", 2, None, {"CPU": 2, "GPU": 0, "node_cpus": [2]})
    with pytest.raises(CnnrtError, match="the cluster has 2 GPUs"):
        plan_actors("cuda", 3, None, {"CPU": 32, "GPU": 2, "node_cpus": [32]})
    with pytest.raises(CnnrtError, match="no GPUs"):
        plan_actors("cuda", None, None, {"CPU": 2, "GPU": 0, "node_cpus": [2]})


def _cli(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnnrt", "batch", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_cli_end_to_end(cluster, idx_input, tmp_path):
    """`cnnrt batch` in a fresh process, joining the module's cluster by its address as a user
    joins a real one; then a rerun that finds everything done; then bad input (exit 2)."""
    src, x = idx_input
    dest = tmp_path / "out"
    p = _cli(src, dest, "--address", cluster, "--backend", "numpy", "--num-actors", "1", "--shard-size", "400", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert (s["rows"], s["shards_written"], s["backend"], s["precision"], s["address"]) == (1000, 3, "numpy", "fp32", cluster)
    assert s["images_per_second"] > 0 and s["inference_seconds"] > 0
    check_exact(read_output(dest), offline(x))
    p = _cli(src, dest, "--address", cluster, "--shard-size", "400")
    assert p.returncode == 0, p.stderr
    assert "0 shard(s) written, 3 already there (skipped)" in p.stdout and "Nothing to compute" in p.stdout
    p = _cli(src, dest, "--shard-size", "100")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{dest} holds the output of a different run (shard_size: was 400, now 100" in p.stderr
    p = _cli(src, tmp_path / "o4", "--address", "127.0.0.1:1")  # nothing listens there
    assert p.returncode == 2 and "cannot reach Ray at 127.0.0.1:1" in p.stderr and "Traceback" not in p.stderr
    p = _cli(tmp_path / "missing.npy", tmp_path / "o2")
    assert p.returncode == 2 and "missing.npy: no such file or folder" in p.stderr and "Traceback" not in p.stderr
    # a bad value found only when a worker reads the shard: the worker's error, plainly, exit 2
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((5, 28, 28), 200.0, np.float32))
    p = _cli(bad, tmp_path / "o3", "--address", cluster, "--num-actors", "1")
    assert p.returncode == 2, p.stderr
    assert "bad.npy: float pixels must lie in [0, 1], these go from 200 to 200" in p.stderr
    assert "Traceback" not in p.stderr and not list((tmp_path / "o3").glob("part-*"))
