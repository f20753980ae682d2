"""ctl-serve: the API over a small run made without training, hostile input, micro-batching, hot swap,
and one real server on loopback.

The run is a toy-world product store, a randomly initialised model (saved as the run's checkpoint,
its fingerprint in the manifests) and catalogs that model embedded, so image queries go through the
same code as for a trained run, in seconds (``ctl_lightning.serve.sample_run``, which the load test serves too).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import import_with_blocked
from test_faults import bomb_png, one_line_error, run_cli

from ctl_lightning.benchmarks import loadtest
from ctl_lightning.cli.export import main as export_main
from ctl_lightning.retrieval.onnx_embedder import exported_embedder
from ctl_lightning.retrieval.recommend import Recommender
from ctl_lightning.retrieval.schema import Recommendations, document_json, recommendations_document
from ctl_lightning.serve.app import create_app
from ctl_lightning.serve.cli import main as serve_main
from ctl_lightning.serve.sample_run import make_run, toy_store, write_run_catalogs
from ctl_lightning.serve.state import ServeSettings

TOKEN = "test-token"
UPLOAD_LIMIT = 256 * 1024
SETTINGS = ServeSettings(max_k=50, max_upload_bytes=UPLOAD_LIMIT, batch_wait_ms=2.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return toy_store(tmp_path_factory.mktemp("serve_data"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store) -> dict[str, Path]:
    """Runs of three models over one small toy store, and catalogs whose model is not there."""
    root = tmp_path_factory.mktemp("serve")
    runs = {name: make_run(root / f"run_{name}", store, seed) for seed, name in enumerate(("a", "b", "onnx"))}
    return {**runs, "no model": write_run_catalogs(root / "run_without_checkpoint", store)}


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs["a"], SETTINGS, token=TOKEN)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def recommender(runs) -> Recommender:
    return Recommender(runs["a"])


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"] and "\n" not in body["error"]["message"], body
    return body["error"]["code"]


def upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "application/octet-stream")}


def still_serving(client: TestClient) -> None:
    assert client.get("/v1/similar/1?k=2").status_code == 200


# --- product queries -----------------------------------------------------------------------------


def test_product_queries_answer_what_ctl_recommend_writes(client, recommender):
    key = recommender.table.spec(recommender.position(7)).key
    for path, expected in (
        ("/v1/similar/7?k=4", recommender.recommend_similar(recommender.product_query(7), 4)),
        (f"/v1/complementary/{key}?k=3&per_category=0", recommender.recommend_complementary(recommender.product_query(7), 3, 0)),
    ):
        response = client.get(path)
        assert response.status_code == 200, response.text
        document = recommendations_document(expected, str(recommender.dir.resolve()), {"kind": "exact"})
        assert response.json() == document_json(document)
        Recommendations.model_validate(response.json())
        assert "inferred_category" not in response.json()["query"]


def test_batch_answers_each_query_or_its_own_error(client, recommender):
    queries = [
        {"mode": "similar", "product": 3, "k": 2},
        {"mode": "complementary", "product": "5", "per_category": 2},
        {"mode": "similar", "product": "999999"},
        {"mode": "similar", "product": "../../etc/passwd"},
        {"mode": "similar", "product": 3, "k": 0},
    ]
    response = client.post("/v1/batch", json={"queries": queries})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["recommendations"]["query"]["row_id"] for r in results[:2]] == [3, 5]
    assert len(results[0]["recommendations"]["items"]) == 2
    assert [r["error"]["code"] for r in results[2:]] == ["unknown_product", "bad_parameter", "bad_parameter"]
    assert client.post("/v1/batch", json={"queries": queries * 100}).status_code == 422  # over max_batch_queries
    assert error_code(client.post("/v1/batch", json={"queries": "nope"})) == "bad_parameter"


def test_health_metrics_and_openapi(client, recommender):
    health = client.get("/healthz").json()
    assert health["products"] == len(recommender) and health["image_queries"] is True
    assert health["model_fingerprint"] == recommender.similar.manifest["model"]["state_fingerprint"]
    client.get("/v1/similar/2")
    text = client.get("/metrics").text
    assert 'ctl_serve_requests_total{method="GET",route="/v1/similar/{product}",status="200"}' in text
    assert "ctl_serve_request_seconds_bucket" in text and f"ctl_serve_catalog_products {float(len(recommender))}" in text
    assert f'fingerprint="{health["model_fingerprint"]}"' in text
    schema = client.get("/openapi.json").json()
    assert {"/v1/similar/{product}", "/v1/complementary", "/v1/batch", "/admin/reload"} <= set(schema["paths"])
    assert "Recommendations" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# --- image queries --------------------------------------------------------------------------------


def test_image_upload_lands_on_the_product_it_shows(client, recommender):
    spec = recommender.table.spec(recommender.position(9))
    box = ",".join(str(v) for v in spec.box)
    response = client.post("/v1/similar?k=3", files=upload(Path(spec.image_path)), data={"box": box})
    assert response.status_code == 200, response.text
    query = response.json()["query"]
    assert query["image"] == Path(spec.image_path).name and query["inferred_category"]["category"] == query["category"]
    expected = recommender.recommend_similar(recommender.image_query(spec.image_path, box=spec.box), 3)
    assert [i["row_id"] for i in response.json()["items"]] == [i["row_id"] for i in expected.items]
    given = client.post("/v1/complementary", files=upload(Path(spec.image_path)), data={"box": box, "category": spec.category})
    assert given.status_code == 200 and "inferred_category" not in given.json()["query"]
    assert spec.category not in {i["category"] for i in given.json()["items"]}


def test_concurrent_uploads_share_one_forward_pass(runs, recommender):
    app = create_app(runs["a"], ServeSettings(batch_size=8, batch_wait_ms=10_000))
    batcher = app.state.holder.current.batcher
    specs = [recommender.table.spec(p) for p in range(0, 80, 10)]

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            requests = [
                http.post(
                    "/v1/similar?k=3", files=upload(Path(s.image_path)), data={"box": ",".join(map(str, s.box)), "category": s.category}
                )
                for s in specs
            ]
            return await asyncio.gather(*requests)

    before = batcher.batches
    responses = asyncio.run(ask_all())
    # Eight uploads fill one batch of eight long before the 10 s wait: exactly one forward pass.
    assert batcher.batches - before == 1
    for spec, response in zip(specs, responses):
        assert response.status_code == 200, response.text
        alone = recommender.recommend_similar(recommender.image_query(spec.image_path, spec.category, spec.box), 3)
        got = response.json()["items"]
        assert [i["row_id"] for i in got] == [i["row_id"] for i in alone.items]
        np.testing.assert_allclose([i["score"] for i in got], [i["score"] for i in alone.items], atol=1e-4)
    assert "ctl_serve_embed_batch_size_bucket" in app.state.metrics.render().decode()


def test_without_the_model_products_are_served_and_images_are_503(runs, recommender):
    with TestClient(create_app(runs["no model"], SETTINGS)) as client:
        assert client.get("/healthz").json()["image_queries"] is False
        still_serving(client)
        response = client.post("/v1/similar", files=upload(Path(recommender.table.spec(0).image_path)))
        assert (response.status_code, error_code(response)) == (503, "no_model")


# --- hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, code",
    [
        ("/v1/similar/999999", "unknown_product"),
        ("/v1/similar/nosuch@0.1,0.1,0.1,0.1", "unknown_product"),
        ("/v1/similar/..%2F..%2Fetc%2Fpasswd", "bad_parameter"),
        ("/v1/complementary/%2E%2E%2Fcatalogs", "bad_parameter"),
        ("/v1/similar/..%5Cwindows", "bad_parameter"),
        ("/v1/similar/1?k=0", "bad_parameter"),
        ("/v1/similar/1?k=-3", "bad_parameter"),
        ("/v1/similar/1?k=51", "bad_parameter"),
        ("/v1/similar/1?k=99999999999999999999999", "bad_parameter"),
        ("/v1/similar/1?k=five", "bad_parameter"),
        ("/v1/complementary/1?per_category=-1", "bad_parameter"),
        ("/v2/anything", "not_found"),
    ],
)
def test_bad_product_queries_get_their_code_and_the_server_keeps_serving(client, path, code):
    response = client.get(path)
    assert response.status_code == {"unknown_product": 404, "not_found": 404, "bad_parameter": 422}[code]
    assert error_code(response) == code
    still_serving(client)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, as it reads the 10000 x 10000 header
def test_hostile_uploads_get_their_code_and_the_server_keeps_serving(client, recommender, tmp_path):
    spec = recommender.table.spec(0)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 20)
    cases = [
        (upload(bomb_png(tmp_path / "bomb.png")), {}, 415, "not_an_image"),
        (upload(bomb_png(tmp_path / "warned.png", side=10_000)), {}, 415, "not_an_image"),  # Pillow would only warn and decode it
        (upload(text), {}, 415, "not_an_image"),
        ({"image": ("empty.png", b"", "image/png")}, {}, 415, "not_an_image"),
        ({"image": ("big.png", b"\x89PNG" + b"0" * UPLOAD_LIMIT, "image/png")}, {}, 413, "upload_too_large"),  # the image
        ({"image": ("huge.png", b"\x89PNG" + b"0" * 2 * UPLOAD_LIMIT, "image/png")}, {}, 413, "upload_too_large"),  # the body
        (upload(Path(spec.image_path)), {"box": "0.5,0.5,0.9,0.9"}, 422, "bad_parameter"),
        (upload(Path(spec.image_path)), {"category": "Spacesuits"}, 422, "bad_parameter"),
        (None, {}, 422, "bad_parameter"),
    ]
    for files, data, status, code in cases:
        response = client.post("/v1/similar", files=files, data=data)
        assert (response.status_code, error_code(response)) == (status, code), response.text
        still_serving(client)


def test_a_body_that_grows_past_the_limit_is_cut_off(client):
    def chunks():
        for _ in range(8):
            yield b"x" * (UPLOAD_LIMIT // 4)

    response = client.post("/v1/similar", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert (response.status_code, error_code(response)) == (413, "upload_too_large")
    still_serving(client)


# --- hot swap --------------------------------------------------------------------------------------


def test_reload_needs_the_token(client, runs):
    assert error_code(client.post("/admin/reload")) == "missing_token"
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, error_code(wrong)) == (403, "wrong_token")
    with TestClient(create_app(runs["a"], SETTINGS)) as no_token:
        off = no_token.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (off.status_code, error_code(off)) == (403, "reload_disabled")
    still_serving(client)


def test_reload_swaps_runs_without_failing_requests_in_flight(runs, recommender, tmp_path):
    app = create_app(runs["a"], SETTINGS, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    old = app.state.holder.current.fingerprint
    spec = recommender.table.spec(4)

    async def traffic_with_a_reload():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as http:
            queries = [http.get(f"/v1/complementary/{row}") for row in range(12)]
            images = [http.post("/v1/similar", files=upload(Path(spec.image_path))) for _ in range(6)]
            reload = http.post("/admin/reload", headers=auth, json={"run_dir": str(runs["b"])})
            return await asyncio.gather(*queries[:6], *images[:3], reload, *queries[6:], *images[3:])

    responses = asyncio.run(traffic_with_a_reload())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    with TestClient(app) as client:
        health = client.get("/healthz").json()
        assert health["run"] == str(runs["b"]) and health["model_fingerprint"] != old
        # A damaged run is refused, and the one served stays.
        damaged = tmp_path / "damaged"
        shutil.copytree(runs["a"], damaged)
        (damaged / "catalogs" / "compatible" / "embeddings.npy").write_bytes(b"garbage")
        refused = client.post("/admin/reload", headers=auth, json={"run_dir": str(damaged)})
        assert (refused.status_code, error_code(refused)) == (422, "reload_failed")
        assert "embeddings.npy" in refused.json()["error"]["message"]
        assert client.get("/healthz").json()["run"] == str(runs["b"])
        assert client.post("/v1/similar", files=upload(Path(spec.image_path))).status_code == 200
        assert 'ctl_serve_reloads_total{result="failed"} 1.0' in client.get("/metrics").text


def repoint(link: Path, target: Path) -> None:
    """``ln -sfn target link``, atomically: a new link renamed over the old one."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def wait_for_run(client: TestClient, run: Path, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while (health := client.get("/healthz").json())["run"] != str(run.resolve()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return health


def test_a_watched_symlink_is_followed_to_each_run_it_points_at_and_a_broken_one_is_refused(runs, tmp_path):
    link = tmp_path / "current"
    os.symlink(runs["a"], link)
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["a"], damaged)
    (damaged / "catalogs" / "similar" / "manifest.json").write_text("{")
    with TestClient(create_app(link, SETTINGS, watch_interval=0.05)) as client:
        first = client.get("/healthz").json()
        assert first["run"] == str(runs["a"].resolve())
        repoint(link, runs["b"])
        swapped = wait_for_run(client, runs["b"])
        assert swapped["run"] == str(runs["b"].resolve()) and swapped["model_fingerprint"] != first["model_fingerprint"]
        repoint(link, damaged)
        deadline = time.monotonic() + 30
        while 'ctl_serve_reloads_total{result="failed"} 1.0' not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = client.get("/metrics").text
        assert 'ctl_serve_reloads_total{result="failed"} 1.0' in metrics and 'ctl_serve_reloads_total{result="ok"} 1.0' in metrics
        time.sleep(0.3)  # several more polls: the broken target is not retried while the link stays
        assert 'ctl_serve_reloads_total{result="failed"} 1.0' in client.get("/metrics").text
        assert client.get("/healthz").json()["run"] == str(runs["b"].resolve())
        still_serving(client)
        repoint(link, runs["a"])
        assert wait_for_run(client, runs["a"])["model_fingerprint"] == first["model_fingerprint"]
    assert not any(thread.name == "ctl-serve-watch" for thread in threading.enumerate()), "the watcher stops with the app"


def test_watch_needs_a_symlink(runs, capsys):
    code, stderr = run_cli(serve_main, [str(runs["a"]), "--watch", "--port", "0"], capsys)
    line = one_line_error(stderr, "ctl-serve")
    assert code != 0 and "not a symlink" in line and str(runs["a"]) in line


# --- ONNX ---------------------------------------------------------------------------------------------


def test_onnx_export_embeds_store_crops_like_torch_and_the_server_uses_it(runs, store, recommender, capsys):
    run = runs["onnx"]
    code, stderr = run_cli(export_main, ["onnx", str(run)], capsys)
    assert code == 0, stderr
    onnx_recommender = Recommender(run)
    exported, problem = exported_embedder(onnx_recommender.compatible, onnx_recommender.dir)
    assert problem is None and exported.kind == "onnxruntime"
    crops = store.read(store.table.positions)  # every crop of the store, as the catalogs were embedded
    for onnx_vectors, torch_vectors in zip(exported.embed_crops(crops), onnx_recommender.embedder().embed_crops(crops)):
        np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4, rtol=0)
    spec = recommender.table.spec(6)
    with TestClient(create_app(run, SETTINGS)) as client:
        assert client.get("/healthz").json()["embedder"] == "onnxruntime"
        response = client.post("/v1/similar?k=4", files=upload(Path(spec.image_path)), data={"box": ",".join(map(str, spec.box))})
        assert response.status_code == 200, response.text
        alone = onnx_recommender.recommend_similar(onnx_recommender.image_query(spec.image_path, box=spec.box), 4)
        assert [i["row_id"] for i in response.json()["items"]] == [i["row_id"] for i in alone.items]
    # An export of other weights is not used: the checkpoint embeds, and the server says why.
    meta = run / "export" / "embedder.json"
    meta.write_text(meta.read_text().replace(onnx_recommender.similar.manifest["model"]["state_fingerprint"], "0" * 20))
    served = create_app(run, SETTINGS).state.holder.current
    assert served.embedder.kind == "torch" and "other weights" in served.no_onnx


# --- the command ------------------------------------------------------------------------------------


def test_a_bad_run_dir_is_a_one_line_error(tmp_path, capsys):
    code, stderr = run_cli(serve_main, [str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no such catalog folder" in one_line_error(stderr, "ctl-serve")


def test_serving_and_recommending_do_not_import_lightning():
    """A server or the recommender reads checkpoints but never trains: importing Lightning would add
    about 3 s to every start (ctl-serve --help went from 5.8 s to 2.5 s when it stopped)."""
    blocked = ["pytorch_lightning", "lightning_fabric"]
    modules = ["ctl_lightning.serve.cli", "ctl_lightning.serve.app", "ctl_lightning.cli.recommend", "ctl_lightning.cli.export"]
    result = import_with_blocked(modules, blocked)
    assert result.returncode == 0, result.stderr[-2000:]


def test_ctl_serve_on_loopback_answers_and_stops(runs):
    port = loadtest.free_port()
    env = {
        **os.environ,
        "CTL_SERVE_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    server = subprocess.Popen(
        # The run without a model starts fastest (no network to build); image queries are tested above.
        [sys.executable, "-m", "ctl_lightning.serve", str(runs["no model"]), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ctl-serve did not answer /healthz within 120 s"
            time.sleep(0.2)
        response = httpx.get(f"{base}/v1/complementary/3?k=2", timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 2
        assert httpx.get(f"{base}/v1/similar/3?k=0", timeout=30).json()["error"]["code"] == "bad_parameter"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, server.stderr.read().decode()[-3000:]


# --- the load test (benchmarks/loadtest.py; make loadtest, and make bench's loadtest step) ----------------


@pytest.mark.slow
def test_load_test_mixes_every_endpoint_reloads_under_load_and_stops_the_server(runs, tmp_path):
    out = tmp_path / "load"
    argv = [str(runs["a"]), "--reload-run", str(runs["b"]), "--clients", "4", "--seconds", "3", "--out", str(out)]
    loadtest.main(argv)  # exits 1 when any request failed or the reload did not answer 200
    result = json.loads((out / "loadtest.json").read_text())
    assert result["errors"] == 0 and result["errors_by_kind"] == {}, result["errors_by_kind"]
    assert result["requests"] == sum(e["requests"] for e in result["endpoints"].values())
    for endpoint, figures in result["endpoints"].items():
        assert figures["requests"] > 0 and figures["ok"] == figures["requests"] and figures["p99_ms"] >= figures["p50_ms"] > 0, endpoint
    reload = result["reload"]
    assert reload["status"] == 200 and reload["served_after"] == str(runs["b"]) and reload["errors_around"] == 0
    assert reload["requests_in_flight"] > 0  # the reload ran under load
    assert set(result["server"]["answers_by_status"]) == {"200"} and result["server"]["forward_passes"] > 0
    assert result["rss"]["peak_mib"] >= result["rss"]["first_mib"] > 0
    assert (result["server"]["stopped_by"], result["server"]["exit_code"]) == ("SIGINT", 0)
    assert not Path(f"/proc/{result['server']['pid']}").exists()  # stopped and reaped: no orphan
    assert "## Load test: ctl-serve on loopback" in (out / "LOADTEST.md").read_text()
    assert "Uvicorn running" not in (out / "server.log").read_text()  # --log-level warning: the log holds problems only


def test_load_test_of_a_bad_run_dir_is_a_one_line_error(tmp_path, capsys):
    code, stderr = run_cli(loadtest.main, [str(tmp_path / "nothing"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "no such run folder" in one_line_error(stderr, "loadtest")
