"""`cnnrt batch` on two simulated Ray nodes (ray.cluster_utils.Cluster: two raylets on this
machine, as a head node and a worker node of a real cluster). Each node has 2 CPUs and each model
actor takes 1.5, so the two actors must run on different nodes. One run (Ray starts slowly on two
cores): the work spreads over both nodes, an actor is killed midway, and still every input row
gives exactly one output row, equal to an offline run."""
from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from cnnrt.batch import run_batch  # noqa: E402
from cnnrt.idx import write_idx  # noqa: E402

from ray_helpers import MODEL, DiesOnceRecordsNode, check_exact, fresh_images, offline, read_output, ship_by_value  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    ship_by_value()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def idx_input(tmp_path, rng, mnist_test):
    x = fresh_images(rng, mnist_test[0], 1200)
    path = tmp_path / "in-images-idx3-ubyte"
    write_idx(path, x)
    return path, x


def test_two_nodes_every_row_once_despite_a_killed_actor(two_nodes, idx_input, tmp_path):
    src, x = idx_input
    seen, marker = tmp_path / "nodes", tmp_path / "died"
    seen.mkdir()
    s = run_batch(src, tmp_path / "out", MODEL, backend="numpy", shard_size=200, batch_size=100, num_actors=2,
                  cpus_per_actor=1.5, predictor=DiesOnceRecordsNode,
                  predictor_kwargs={"folder": str(seen), "marker": str(marker), "after": 3})
    assert marker.exists(), "the fault was not injected: no actor reached its third batch"
    assert (s["nodes"], s["cluster_cpus"], s["actors"], s["shards_written"], s["rows"]) == (2, 4.0, 2, 6, 1200)
    out = read_output(tmp_path / "out")
    check_exact(out, offline(x))
    assert np.array_equal(np.sort(out["row"]), np.arange(1200))
    nodes = {p.read_text() for p in seen.iterdir()}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}, "the model did not run on both nodes"
