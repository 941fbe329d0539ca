"""`cnnrt serve`'s HTTP API through Starlette's test client: every endpoint, every bad input.

Answers are checked against the same models run offline (Session.probabilities on the same
images), and the shipped model's labels against MNIST's own labels; every bad input must give a
4xx with a JSON message that says what was wrong, never a 500.
"""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from conftest import SHIPPED, random_deep_mnist_params  # noqa: E402

BUNDLE = SHIPPED / "deep_mnist.safetensors"


@pytest.fixture(scope="module")
def sessions():
    import cnnrt
    from cnnrt.model import deep_mnist
    from cnnrt.session import Session

    rng = np.random.default_rng(12345)
    return {"deep_mnist": cnnrt.load(BUNDLE, backend="numpy"),
            "random": Session(deep_mnist(random_deep_mnist_params(rng), name="random"), backend="numpy")}


@pytest.fixture(scope="module")
def client(sessions):
    from cnnrt.serve.app import create_app

    app = create_app(sessions, max_batch=16, max_delay_ms=1, max_body_bytes=200_000, max_image_pixels=2_000_000)
    with TestClient(app) as c:  # runs the lifespan: batchers start, and drain on exit
        yield c


def infer_json(x: np.ndarray, datatype: str = "UINT8", shape=None, name: str = "images", nested: bool = False) -> dict:
    shape = list(x.shape) if shape is None else shape
    data = x.tolist() if nested else x.ravel().tolist()
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def outputs(r) -> dict:
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


# ---------------------------------------------------------------------- endpoints

def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "cnnrt" and meta["models"] == ["deep_mnist", "random"]


def test_model_metadata_names_shapes_datatypes(client, sessions):
    m = client.get("/v2/models/deep_mnist").json()
    assert m["name"] == "deep_mnist"
    assert m["inputs"] == [{"name": "images", "shape": [-1, 28, 28, 1], "datatype": "UINT8"}]
    assert m["outputs"] == [{"name": "probabilities", "shape": [-1, 10], "datatype": "FP32"},
                            {"name": "label", "shape": [-1], "datatype": "INT64"}]
    assert m["parameters"]["backend"] == "numpy" and m["parameters"]["precision"] == "fp32"
    assert m["parameters"]["accepted_datatypes"] == ["UINT8", "FP32"]
    assert client.get("/v2/models/random/versions/1").json()["name"] == "random"
    assert client.get("/v2/models/random/ready").json() == {"name": "random", "ready": True}
    assert client.get("/v2/models/deep_mnist/versions/1/ready").status_code == 200


def test_page_and_model_list(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<canvas id="canvas"' in r.text and "/api/models/" in r.text
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["deep_mnist", "random"]
    assert models[0]["labels"] == [str(i) for i in range(10)] and models[0]["input_shape"] == [28, 28, 1]


def test_infer_uint8_batch_matches_offline_and_mnist_labels(client, sessions, mnist_test, rng):
    x, y = mnist_test
    idx = rng.choice(len(x), size=40, replace=False)
    r = client.post("/v2/models/deep_mnist/infer", json=infer_json(x[idx]))
    out = outputs(r)
    assert out["probabilities"]["shape"] == [40, 10] and out["probabilities"]["datatype"] == "FP32"
    assert out["label"]["shape"] == [40] and out["label"]["datatype"] == "INT64"
    probs = np.asarray(out["probabilities"]["data"], dtype=np.float32).reshape(40, 10)
    offline = sessions["deep_mnist"].probabilities(x[idx])
    np.testing.assert_allclose(probs, offline, rtol=0, atol=1e-5)
    assert out["label"]["data"] == offline.argmax(axis=1).tolist()
    assert (np.asarray(out["label"]["data"]) == y[idx]).mean() >= 0.9  # the model itself, against MNIST
    body = r.json()
    assert body["model_name"] == "deep_mnist"
    p = body["parameters"]
    assert p["backend"] == "numpy" and p["precision"] == "fp32" and p["batch_size"] == 40 and p["batch_requests"] == 1


def test_every_accepted_layout_gives_the_same_answer(client, sessions, mnist_test, rng):
    x, _ = mnist_test
    imgs = x[rng.choice(len(x), size=3, replace=False)]
    offline = sessions["deep_mnist"].probabilities(imgs)
    scaled = imgs.astype(np.float32) * np.float32(sessions["deep_mnist"].input_scale)
    requests = [
        infer_json(imgs),                                          # [N, 28, 28] flat
        infer_json(imgs[..., None]),                               # [N, 28, 28, 1] flat
        infer_json(imgs[..., None], nested=True),                  # nested lists
        infer_json(imgs, nested=True),
        infer_json(scaled, datatype="FP32"),                       # FP32, already scaled
        infer_json(scaled[..., None], datatype="FP32", nested=True),
    ]
    for req in requests:
        probs = np.asarray(outputs(client.post("/v2/models/deep_mnist/infer", json=req))["probabilities"]["data"])
        np.testing.assert_allclose(probs.reshape(3, 10), offline, rtol=0, atol=1e-5)


def test_each_model_answers_for_itself(client, sessions, mnist_test, rng):
    x, _ = mnist_test
    imgs = x[rng.choice(len(x), size=8, replace=False)]
    for name in ("deep_mnist", "random"):
        probs = outputs(client.post(f"/v2/models/{name}/versions/1/infer", json=infer_json(imgs)))["probabilities"]
        np.testing.assert_allclose(np.asarray(probs["data"]).reshape(8, 10), sessions[name].probabilities(imgs),
                                   rtol=0, atol=1e-5)
    a = sessions["deep_mnist"].probabilities(imgs)
    assert not np.allclose(a, sessions["random"].probabilities(imgs), atol=1e-3)  # the two really differ


def test_requested_outputs_and_request_id(client, mnist_test):
    x, y = mnist_test
    req = {**infer_json(x[:2]), "id": "req-7", "outputs": [{"name": "label"}]}
    r = client.post("/v2/models/deep_mnist/infer", json=req)
    body = r.json()
    assert body["id"] == "req-7" and [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0]["data"] == y[:2].tolist()


# ---------------------------------------------------------------------- bad input: status and message

def _inp(**changes) -> dict:
    base = {"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
    base.update(changes)
    return {"inputs": [base]}


BAD_JSON_BODIES = [
    # (id, body, status, message fragment)
    ("wrong shape", _inp(shape=[1, 28, 27]), 400, "shape [1, 28, 27] does not fit the model; expected [N, 28, 28, 1] or [N, 28, 28]"),
    ("wrong channels", _inp(shape=[1, 28, 28, 3], data=[0] * 2352), 400, "shape [1, 28, 28, 3] does not fit"),
    ("shape of a single image", _inp(shape=[28, 28]), 400, "shape [28, 28] does not fit"),
    ("shape not numbers", _inp(shape=["1", 28, 28]), 400, "'shape' must be a list of whole numbers"),
    ("no images", _inp(shape=[0, 28, 28], data=[]), 400, "holds no images; N must be at least 1"),
    ("too few values", _inp(data=[0] * 783), 400, "'data' holds 783 values; shape [1, 28, 28] needs 784"),
    ("nested wrong", _inp(data=[[0] * 28] * 28), 400, "'data' is nested as [28, 28]; expected [1, 28, 28]"),
    ("ragged", _inp(data=[[0] * 28] * 27 + [[0] * 27]), 400, "not a regular array of numbers"),
    ("wrong datatype", _inp(datatype="INT32"), 400, "datatype 'INT32' is not supported; send UINT8"),
    ("no datatype", _inp(datatype=None), 400, "datatype None is not supported"),
    ("uint8 too large", _inp(data=[0] * 783 + [256]), 400, "UINT8 data must be whole numbers from 0 to 255; found 256 at flat index 783"),
    ("uint8 negative", _inp(data=[-1] + [0] * 783), 400, "found -1 at flat index 0"),
    ("uint8 fraction", _inp(data=[0.5] + [0] * 783), 400, "UINT8 data must be whole numbers"),
    ("fp32 too large for float32", _inp(datatype="FP32", data=[1e39] + [0] * 783), 400, "FP32 data holds NaN or Inf (or a value too large for float32)"),
    ("strings", _inp(data=["0"] * 784), 400, "'data' must hold numbers only; it holds strings"),
    ("booleans", _inp(data=[True] * 784), 400, "it holds true/false values"),
    ("nulls", _inp(data=[None] * 784), 400, "'data' must hold numbers only"),
    ("data not a list", _inp(data="AAAA"), 400, "'data' must be a list of numbers"),
    ("no data", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8"}]}, 400, "'data' is missing"),
    ("unknown input", _inp(name="input_1"), 400, "unknown input 'input_1'; the model takes 'images'"),
    ("two inputs", {"inputs": _inp()["inputs"] * 2}, 400, "'inputs' must be a list of 1 tensor object(s)"),
    ("no inputs", {"input": []}, 400, "'inputs' must be a list of 1 tensor object(s)"),
    ("not an object", [1, 2, 3], 400, "the request must be a JSON object with 'inputs', got list"),
    ("binary extension", {"inputs": [{**_inp()["inputs"][0], "parameters": {"binary_data_size": 784}}]}, 400,
     "the binary tensor extension is not supported"),
    ("unknown output", {**_inp(), "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'; the model gives ['probabilities', 'label']"),
]


@pytest.mark.parametrize("body,status,message", [b[1:] for b in BAD_JSON_BODIES], ids=[b[0] for b in BAD_JSON_BODIES])
def test_bad_request_bodies(client, body, status, message):
    r = client.post("/v2/models/deep_mnist/infer", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert "model 'deep_mnist'" in r.json()["error"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_refused(client, literal):
    # JSON has no NaN, but Python's parser (and many clients) write and read these literals
    body = '{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [%s%s]}]}' % (
        literal, ", 0.0" * 783)
    r = client.post("/v2/models/deep_mnist/infer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "FP32 data holds NaN or Inf" in r.json()["error"] and "at flat index 0" in r.json()["error"]
    r = client.post("/v2/models/deep_mnist/infer", content=body.replace('"FP32"', '"UINT8"'))
    assert r.status_code == 400 and "UINT8 data must be whole numbers" in r.json()["error"]


@pytest.mark.parametrize("body,message", [
    (b"images=1,2,3", "the request body is not JSON"),
    (b"", "the request body is not JSON"),
    (b'{"inputs": [', "the request body is not JSON"),
    (b"\xff\xfe\x00garbage", "the request body is not JSON"),
    (b"[" * 100_000, "the request body is not JSON"),  # deeper than the parser's recursion limit
])
def test_not_json(client, body, message):
    r = client.post("/v2/models/deep_mnist/infer", content=body)
    assert r.status_code == 400 and message in r.json()["error"]


def test_too_large_body_is_413(client):
    big = json.dumps(infer_json(np.zeros((300, 28, 28), dtype=np.uint8))).encode()
    assert len(big) > 200_000
    r = client.post("/v2/models/deep_mnist/infer", content=big)
    assert r.status_code == 413
    assert f"the request body is {len(big):,} bytes, larger than the limit of 200,000 bytes" in r.json()["error"]
    # without a Content-Length (chunked), the limit holds while reading
    r = client.post("/v2/models/deep_mnist/infer", content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]))
    assert r.status_code == 413 and "larger than the limit of 200,000 bytes" in r.json()["error"]


def test_unknown_model_route_and_method(client):
    for r in (client.post("/v2/models/resnet/infer", json=_inp()), client.get("/v2/models/resnet"),
              client.get("/v2/models/resnet/ready")):
        assert r.status_code == 404
        assert r.json()["error"] == "unknown model 'resnet'; this server has: deep_mnist, random"
    r = client.get("/v2/models/deep_mnist/versions/2")
    assert r.status_code == 404 and "has no version '2'" in r.json()["error"]
    r = client.get("/v2/models/deep_mnist/infer")
    assert r.status_code == 405 and r.json()["error"] == "Method Not Allowed: GET /v2/models/deep_mnist/infer"
    r = client.get("/v1/models/deep_mnist")
    assert r.status_code == 404 and r.json()["error"] == "Not Found: GET /v1/models/deep_mnist"


# ---------------------------------------------------------------------- the page's image endpoint

def png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def as_drawn(digit: np.ndarray, scale: int = 10) -> np.ndarray:
    """An MNIST digit as a person draws it on the page: dark ink on white, 10x larger."""
    return 255 - np.kron(digit, np.ones((scale, scale), dtype=np.uint8))


def test_classify_image_like_the_page(client, sessions, mnist_test, rng):
    x, y = mnist_test
    idx = rng.choice(len(x), size=12, replace=False)
    right = 0
    for i in idx:
        r = client.post("/api/models/deep_mnist/classify", content=png(as_drawn(x[i])),
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        j = r.json()
        seen = np.asarray(j["input"]["data"], dtype=np.uint8).reshape(j["input"]["shape"])
        assert seen.shape == (28, 28, 1)
        # the answer is the model's on the preprocessed input it reports
        np.testing.assert_allclose(j["probabilities"], sessions["deep_mnist"].probabilities(seen[None])[0], atol=1e-5)
        assert j["label"] == j["labels"][j["class_index"]] and j["class_index"] == int(np.argmax(j["probabilities"]))
        assert j["parameters"]["backend"] == "numpy" and j["parameters"]["batch_size"] == 1
        right += j["class_index"] == y[i]
    # MNIST digits are already 20x20 boxes centred by mass: preprocessing them again keeps them readable
    assert right >= 10, f"only {right}/12 of MNIST's own digits, drawn as dark on white, were read right"


@pytest.mark.parametrize("body,status,message", [
    (b"", 400, "the request body is empty"),
    (b"this is not an image", 400, "the request body is not an image Pillow can read"),
    (png(np.full((50, 50), 255, dtype=np.uint8)), 400, "no digit found: the image is blank"),
    (png(np.zeros((1500, 1500), dtype=np.uint8)), 413, "the image is 1500x1500 pixels; the limit is 2,000,000 pixels"),
    (b"\x89PNG" + b"\x00" * 300_000, 413, "larger than the limit of 200,000 bytes"),
])
def test_classify_bad_images(client, body, status, message):
    r = client.post("/api/models/deep_mnist/classify", content=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_classify_unknown_model(client):
    r = client.post("/api/models/nope/classify", content=png(as_drawn(np.eye(28, dtype=np.uint8) * 255)))
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]


# ---------------------------------------------------------------------- metrics

def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_batches_and_latency(sessions, mnist_test):
    from cnnrt.serve.app import create_app

    x, _ = mnist_test
    sizes = [1, 3, 5, 2]
    with TestClient(create_app(sessions, max_batch=8, max_delay_ms=0)) as c:
        for n in sizes:
            assert c.post("/v2/models/random/infer", json=infer_json(x[:n])).status_code == 200
        assert c.post("/v2/models/random/infer", content=b"nope").status_code == 400
        assert c.post("/v2/models/nope/infer", content=b"{}").status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = _samples(r.text)
    req = "cnnrt_requests_total"
    assert s[(req, (("code", "200"), ("endpoint", "infer"), ("model", "random")))] == 4
    assert s[(req, (("code", "400"), ("endpoint", "infer"), ("model", "random")))] == 1
    assert s[(req, (("code", "404"), ("endpoint", "infer"), ("model", "(unknown)")))] == 1
    assert s[("cnnrt_images_total", (("model", "random"),))] == sum(sizes)
    # sequential requests: one backend call each, so the batch size histogram holds exactly the sizes
    assert s[("cnnrt_batch_size_count", (("model", "random"),))] == len(sizes)
    assert s[("cnnrt_batch_size_sum", (("model", "random"),))] == sum(sizes)
    assert s[("cnnrt_batch_size_bucket", (("le", "2.0"), ("model", "random")))] == 2
    assert s[("cnnrt_request_duration_seconds_count", (("endpoint", "infer"), ("model", "random")))] == 5
    assert s[("cnnrt_request_duration_seconds_sum", (("endpoint", "infer"), ("model", "random")))] > 0
    assert s[("cnnrt_pending_requests", (("model", "random"),))] == 0
    assert s[("cnnrt_model_info", (("backend", "numpy"), ("model", "deep_mnist"), ("precision", "fp32")))] == 1
    assert ("cnnrt_images_total", (("model", "deep_mnist"),)) not in s or s[("cnnrt_images_total", (("model", "deep_mnist"),))] == 0


def test_create_app_checks_its_arguments(sessions):
    from cnnrt.serve.app import create_app

    with pytest.raises(ValueError, match="at least one model"):
        create_app({})
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        create_app(sessions, max_batch=0)


def test_the_app_serves_again_after_a_shutdown(sessions, mnist_test):
    # lifespan twice (a test client reopened, an embedding server restarted): batchers restart
    from cnnrt.serve.app import create_app

    x, y = mnist_test
    app = create_app({"m": sessions["deep_mnist"]})
    for _ in range(2):
        with TestClient(app) as c:
            assert outputs(c.post("/v2/models/m/infer", json=infer_json(x[:3])))["label"]["data"] == y[:3].tolist()


def test_decode_round_trips_any_batch_in_every_layout(sessions):
    """Property: whatever the batch and layout, the decoded array is the one that was sent."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cnnrt.serve.protocol import ApiError, decode_request

    s = sessions["deep_mnist"]

    @settings(max_examples=25, deadline=None)
    @given(n=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), four_d=st.booleans(), nested=st.booleans(),
           fp32=st.booleans(), cut=st.integers(-3, 3))
    def check(n, seed, four_d, nested, fp32, cut):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, size=(n, 28, 28, 1) if four_d else (n, 28, 28)).astype(np.uint8)
        sent = x.astype(np.float32) / 255 if fp32 else x
        req = infer_json(sent, datatype="FP32" if fp32 else "UINT8", nested=nested)
        if cut and not nested:  # a flat list one value too long or short is refused, never reshaped
            data = req["inputs"][0]["data"]
            req["inputs"][0]["data"] = data[:cut] if cut < 0 else data + [0] * cut
            with pytest.raises(ApiError) as e:
                decode_request("m", s, req)
            assert e.value.status == 400 and f"holds {x.size + cut} values" in e.value.message
            return
        got, outs, _ = decode_request("m", s, req)
        assert got.shape == (n, 28, 28, 1) and got.dtype == (np.float32 if fp32 else np.uint8)
        np.testing.assert_array_equal(got.reshape(sent.shape), sent)
        assert outs == ["probabilities", "label"]

    check()
