"""The Streamlit page without a browser: its helpers directly, and the page itself through AppTest
(the real script, run in-process against the tiny training run)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ctl_lightning.app import logic
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.recommend import Recommender

APP = Path(__file__).resolve().parents[1] / "src" / "ctl_lightning" / "app" / "streamlit_app.py"


def fake_run(path: Path, mtime: float | None = None) -> Path:
    """A run folder that looks finished to discovery: both catalog manifests exist."""
    for kind in logic.CATALOG_KINDS:
        manifest = path / "catalogs" / kind / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{}")
        if mtime is not None:
            os.utime(manifest, (mtime, mtime))
    return path


# --- helpers ----------------------------------------------------------------------------------------


def test_parse_args_takes_run_dir_and_ignores_the_rest():
    assert logic.parse_args(["--run-dir", "outputs/train/runs/x", "-x", "--other=1"]).run_dir == "outputs/train/runs/x"
    assert logic.parse_args([]).run_dir is None
    assert logic.parse_args(["--data-root", "/moved/data"]).data_root == "/moved/data"


def test_find_runs_prefers_the_latest_training_run(tmp_path):
    older = fake_run(tmp_path / "outputs" / "train" / "runs" / "2024-01-01_00-00-00", mtime=1_000_000)
    newer = fake_run(tmp_path / "outputs" / "train" / "runs" / "2024-02-01_00-00-00", mtime=1_500_000)
    evaluated = fake_run(tmp_path / "outputs" / "eval" / "runs" / "2023-01-01_00-00-00", mtime=2_000_000)
    (tmp_path / "outputs" / "train" / "runs" / "2025-01-01_unfinished").mkdir()  # no catalogs: not a candidate
    fake_run(tmp_path / "outputs" / "train" / "multiruns" / "2025-02-02" / "0", mtime=3_000_000)  # sweeps: not served
    runs = logic.find_runs([tmp_path, tmp_path])  # a root named twice is searched once
    assert runs == [newer, older, evaluated]
    assert logic.latest_run([tmp_path]) == newer
    assert logic.latest_run([tmp_path / "nowhere"]) is None


def test_resolve_run_dir_accepts_runs_and_catalog_folders(tiny_run, tmp_path):
    assert logic.resolve_run_dir(f"  {tiny_run}  ") == tiny_run
    assert logic.resolve_run_dir(tiny_run / "catalogs") == tiny_run / "catalogs"
    assert logic.has_catalogs(tiny_run) and logic.has_catalogs(tiny_run / "catalogs")
    assert len(logic.catalog_stamp(tiny_run)) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: "", "make train"),
        (lambda tmp: str(tmp / "missing"), "does not exist"),
        (lambda tmp: str((tmp / "file.txt").resolve()), "is a file"),
        (lambda tmp: str(tmp), "has no catalogs"),
    ],
)
def test_resolve_run_dir_errors_are_one_line(tmp_path, make, message):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CtlError, match=message) as caught:
        logic.resolve_run_dir(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_parse_product_k_and_box():
    assert logic.parse_product(" 12 ") == "12"
    assert logic.parse_product("sig@0.1,0.2,0.3,0.4") == "sig@0.1,0.2,0.3,0.4"
    assert logic.parse_product("   ") is None and logic.parse_product(None) is None
    assert logic.parse_k("7") == 7
    for bad in (0, logic.MAX_K + 1, "five"):
        with pytest.raises(CtlError, match="k must"):
            logic.parse_k(bad)
    assert logic.parse_box("") is None
    assert logic.parse_box("0.1, 0.2, 0.3, 0.4") == (0.1, 0.2, 0.3, 0.4)
    with pytest.raises(CtlError, match="four numbers"):
        logic.parse_box("0.1,0.2")
    with pytest.raises(CtlError, match="outside"):
        logic.parse_box("0.9,0,0.5,0.5")


def test_error_message_is_one_line_and_prefers_the_user_error():
    assert logic.error_message(CtlError("unknown product '7'")) == "unknown product '7'"
    try:
        try:
            raise CtlError("catalog damaged")
        except CtlError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert logic.error_message(outer) == "catalog damaged"
    message = logic.error_message(ValueError("first line\n  second line"))
    assert message.startswith("unexpected error (ValueError: first line)") and "\n" not in message
    assert logic.error_message(KeyError("x")).startswith("unexpected error (KeyError: 'x')")


def test_random_product_is_a_catalog_row(tiny_run):
    recommender = Recommender(tiny_run)
    rng = np.random.default_rng(0)
    draws = {logic.random_product(recommender, rng) for _ in range(20)}
    assert draws <= set(recommender.similar.row_ids.tolist()) and len(draws) > 1


def test_save_upload_is_content_addressed_and_stays_in_its_folder(tmp_path):
    first = logic.save_upload("../../etc/my photo.png", b"abc", tmp_path)
    assert first.read_bytes() == b"abc" and first.name == "my_photo.png"
    assert tmp_path in first.parents
    assert logic.save_upload("../../etc/my photo.png", b"abc", tmp_path) == first
    assert logic.save_upload("my photo.png", b"abd", tmp_path) != first
    with pytest.raises(CtlError, match="empty"):
        logic.save_upload("x.png", b"", tmp_path)


def test_old_uploads_are_removed_and_the_one_in_use_is_kept(tmp_path):
    first = logic.save_upload("first.png", b"first", tmp_path)
    os.utime(first.parent, (1, 1))  # the least recently used upload
    for i in range(logic.KEPT_UPLOADS):
        latest = logic.save_upload(f"u{i}.png", f"upload {i}".encode(), tmp_path)
        assert latest.is_file()
    folders = [entry for entry in tmp_path.iterdir() if entry.is_dir()]
    assert len(folders) == logic.KEPT_UPLOADS and not first.exists()
    newest = logic.save_upload("again.png", b"first", tmp_path)
    assert newest.is_file() and len([e for e in tmp_path.iterdir() if e.is_dir()]) == logic.KEPT_UPLOADS


def product_picture(recommender: Recommender, position: int = 0) -> tuple[bytes, str]:
    """A real product photo of the catalog (its source image) as uploaded bytes, and its crop box."""
    spec = recommender.table.spec(position)
    return Path(spec.image_path).read_bytes(), ",".join(f"{v:.6f}" for v in spec.box) if spec.box else ""


def test_upload_query_names_the_upload_in_errors(tiny_run, tmp_path):
    recommender = Recommender(tiny_run)
    with pytest.raises(CtlError) as caught:
        logic.upload_query(recommender, "holiday.png", b"\x89PNG\r\n\x1a\n truncated", tmp_path)
    assert "'holiday.png'" in str(caught.value) and str(tmp_path) not in str(caught.value)
    data, box = product_picture(recommender)
    query = logic.upload_query(recommender, "outfit.jpg", data, tmp_path, box=logic.parse_box(box))
    assert query.inferred_category["category"] in logic.catalog_summary(recommender)["categories"]
    assert 0 < query.inferred_category["confidence"] <= 1
    assert logic.query_caption(query.describe()).startswith(f"query · {query.category} (inferred, ")


@pytest.fixture()
def foreign_run(tiny_run, tmp_path) -> Path:
    """The tiny run's catalogs and checkpoints, with a model fingerprint that no checkpoint has."""
    run = tmp_path / "foreign_run"
    shutil.copytree(tiny_run / "catalogs", run / "catalogs")
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    for kind in logic.CATALOG_KINDS:
        manifest_path = run / "catalogs" / kind / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["model"]["state_fingerprint"] = "0" * 20
        manifest_path.write_text(json.dumps(manifest))
    return run


# --- the page, through AppTest ----------------------------------------------------------------------


def block(node, key: str):
    """The container with ``key`` anywhere under ``node``."""
    if getattr(node, "key", None) == key and hasattr(node, "children"):
        return node
    for child in getattr(node, "children", {}).values():
        found = block(child, key)
        if found is not None:
            return found
    return None


def images(node) -> list:
    found = [node] if getattr(node, "type", None) == "image" else []
    for child in getattr(node, "children", {}).values():
        found += images(child)
    return found


def captions(node) -> list[str]:
    out = []
    for image in images(node):
        out += [img.caption for img in image.proto.imgs]
    return out


def start_app(monkeypatch, *argv: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), *argv])
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_page_shows_both_grids_for_a_product(tiny_run, monkeypatch):
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    assert errors(at) == [] and at.text_input(key="run_dir").value == str(tiny_run)
    at.text_input(key="product").input("3").run()
    assert not at.exception and errors(at) == []
    recommender = Recommender(tiny_run)
    query = recommender.product_query("3")
    expected = {
        "similar": recommender.recommend_similar(query, 5),
        "complementary": recommender.recommend_complementary(query, 5, 1),
    }
    for mode, result in expected.items():
        grid = block(at.main, f"{mode}-grid")
        assert grid is not None, f"no {mode} grid"
        assert captions(grid) == [logic.query_caption(result.query)] + [logic.item_caption(i) for i in result.items]
    # complementary: one item per other category by default
    categories = [i["category"] for i in expected["complementary"].items]
    assert len(set(categories)) == len(categories) and query.category not in categories


def test_page_k_and_per_category(tiny_run, monkeypatch):
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    at.text_input(key="product").input("3")
    at.slider(key="k").set_value(3)
    at.number_input(key="per_category").set_value(0)
    at.run()
    assert not at.exception and errors(at) == []
    assert len(images(block(at.main, "similar-grid"))) == 4
    recommender = Recommender(tiny_run)
    plain = recommender.recommend_complementary(recommender.product_query("3"), 3, per_category=0)
    assert captions(block(at.main, "complementary-grid"))[1:] == [logic.item_caption(i) for i in plain.items]


def test_page_random_product(tiny_run, monkeypatch):
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    at.button(key="random").click().run()
    assert not at.exception and errors(at) == []
    row = at.text_input(key="product").value
    assert row.isdigit() and int(row) in Recommender(tiny_run).similar.row_ids
    assert images(block(at.main, "similar-grid")) and images(block(at.main, "complementary-grid"))


def test_page_unknown_product_is_a_readable_error(tiny_run, monkeypatch):
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    at.text_input(key="product").input("987654321").run()
    assert not at.exception
    assert errors(at) == ["unknown product '987654321': give a row id of the catalog or a product key (signature@x,y,w,h)"]
    assert block(at.main, "app-error") is not None and block(at.main, "similar-grid") is None


def test_page_upload_infers_category_or_takes_the_chosen_one(tiny_run, monkeypatch):
    recommender = Recommender(tiny_run)
    data, box = product_picture(recommender)
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    at.radio(key="query_mode").set_value("Upload an image").run()
    at.file_uploader(key="upload").upload("outfit.jpg", data, "image/jpeg")
    at.text_input(key="box").input(box)
    at.run()
    assert not at.exception and errors(at) == []
    assert len(at.success) == 1 and at.success[0].value.startswith("Inferred category: **")
    assert images(block(at.main, "similar-grid")) and images(block(at.main, "complementary-grid"))
    chosen = recommender.table.spec(0).category
    at.selectbox(key="category").set_value(chosen).run()
    assert not at.exception and errors(at) == [] and len(at.success) == 0
    assert captions(block(at.main, "similar-grid"))[0] == f"query · {chosen}"
    assert all(c.split(" · ")[0].split(" ", 1)[1] == chosen for c in captions(block(at.main, "similar-grid"))[1:])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\nthis is not the rest of a png", "cannot read the uploaded file 'broken.png' as an image"),
        ("notes.txt", b"just some text", "cannot read the uploaded file 'notes.txt' as an image"),
    ],
)
def test_page_bad_upload_is_a_readable_error(tiny_run, monkeypatch, name, content, message):
    at = start_app(monkeypatch, "--run-dir", str(tiny_run))
    at.radio(key="query_mode").set_value("Upload an image").run()
    at.file_uploader(key="upload").upload(name, content).run()
    assert not at.exception
    assert len(errors(at)) == 1 and errors(at)[0].startswith(message)


def test_page_catalog_of_another_model_is_a_readable_error(tiny_run, foreign_run, monkeypatch):
    data, _ = product_picture(Recommender(tiny_run))
    at = start_app(monkeypatch, "--run-dir", str(foreign_run))
    at.text_input(key="product").input("3").run()  # product queries check the model too
    assert not at.exception
    assert len(errors(at)) == 1 and "fingerprint does not match the model" in errors(at)[0]
    at.radio(key="query_mode").set_value("Upload an image").run()
    at.file_uploader(key="upload").upload("outfit.jpg", data, "image/jpeg").run()
    assert not at.exception
    assert len(errors(at)) == 1 and "fingerprint does not match the model" in errors(at)[0]


def test_page_bad_run_directory_is_a_readable_error(tiny_run, tmp_path, monkeypatch):
    at = start_app(monkeypatch, "--run-dir", str(tmp_path / "gone"))
    assert errors(at) == [f"run directory {tmp_path / 'gone'} does not exist; type a run directory written by train.py or eval.py"]
    at.text_input(key="run_dir").input(str(tmp_path)).run()
    assert not at.exception and len(errors(at)) == 1 and "has no catalogs" in errors(at)[0]
    at.text_input(key="run_dir").input(str(tiny_run)).run()  # fixed in the sidebar: the page works again
    assert not at.exception and errors(at) == [] and at.text_input(key="product") is not None


def test_page_serves_the_newest_run_without_arguments(tiny_run, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(logic, "search_roots", lambda cwd=None: [empty])
    at = start_app(monkeypatch)
    assert len(errors(at)) == 1 and "make train" in errors(at)[0]

    runs = tmp_path / "project" / "outputs" / "train" / "runs"
    runs.mkdir(parents=True)
    (runs / "2020-01-01_00-00-00").mkdir()  # an unfinished run: skipped
    (runs / "2021-01-01_00-00-00").symlink_to(tiny_run, target_is_directory=True)
    monkeypatch.setattr(logic, "search_roots", lambda cwd=None: [tmp_path / "project"])
    at = start_app(monkeypatch)
    assert errors(at) == [] and at.text_input(key="run_dir").value == str(runs / "2021-01-01_00-00-00")


def test_thumbnail_of_an_upload_query_is_its_crop(tiny_run, tmp_path):
    """The query tile of an upload shows the uploaded picture (cropped to the box), not a blank tile."""
    from ctl_lightning.retrieval.render import Thumbnails

    recommender = Recommender(tiny_run)
    data, box = product_picture(recommender)
    query = logic.upload_query(recommender, "outfit.jpg", data, tmp_path, box=logic.parse_box(box))
    tile = Thumbnails(None).get(query.describe())
    blank = Image.new("RGB", tile.size, (235, 235, 235))
    assert np.abs(np.asarray(tile, dtype=int) - np.asarray(blank, dtype=int)).mean() > 1
    buffer = io.BytesIO()
    tile.save(buffer, format="PNG")
    assert buffer.getvalue()


def test_page_loads_the_catalogs_once_across_interactions(tiny_run, tmp_path, monkeypatch):
    """The Recommender is cached (st.cache_resource): typing, k and reruns do not re-read the catalogs."""
    from ctl_lightning.retrieval import recommend

    run = tmp_path / "copied_run"  # a path no earlier test served, so the cache starts empty for it
    shutil.copytree(tiny_run / "catalogs", run / "catalogs")
    loads = []

    class CountingRecommender(recommend.Recommender):
        def __init__(self, *args, **kwargs):
            loads.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(recommend, "Recommender", CountingRecommender)
    at = start_app(monkeypatch, "--run-dir", str(run))
    at.text_input(key="product").input("3").run()
    at.slider(key="k").set_value(2).run()
    at.button(key="random").click().run()
    assert not at.exception and errors(at) == [] and len(images(block(at.main, "similar-grid"))) == 3
    assert len(loads) == 1

    # A catalog rebuilt in place (new manifest) is loaded again.
    manifest = run / "catalogs" / "similar" / "manifest.json"
    os.utime(manifest, (manifest.stat().st_mtime + 10, manifest.stat().st_mtime + 10))
    at.run()
    assert not at.exception and len(loads) == 2
