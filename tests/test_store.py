"""The product store: crops decoded once into a memory-mapped uint8 array, rebuilt only when its inputs change."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctl_lightning.data.device_store as device_store
import ctl_lightning.data.store as store_module
from ctl_lightning.data.crops import crop_square, to_rgb
from ctl_lightning.data.formats import read_ctl_raw
from ctl_lightning.data.products import TABLE_COLUMNS, ProductSpec
from ctl_lightning.data.sources import CtlSource, StlSource
from ctl_lightning.data.store import IMAGES, MANIFEST, TABLE, BuildStats, ProductStore
from ctl_lightning.data.synthetic import SynthConfig, generate
from ctl_lightning.errors import CtlError

SIZE = 16


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small synthetic dataset; tests that change files work on a copy."""
    return generate(SynthConfig(out=tmp_path_factory.mktemp("store") / "synth", seed=3, outfits=20, scenes=4, styles=4, workers=1))


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    out = tmp_path / "synth"
    shutil.copytree(pristine, out)
    return out


def ctl_source(dataset: Path, **kwargs) -> CtlSource:
    return CtlSource(dataset / "ctl", **kwargs)


def build(dataset: Path, size: int = SIZE, **kwargs) -> ProductStore:
    return ctl_source(dataset, **kwargs).open_store(size, workers=1)


def annotations(dataset: Path):
    return read_ctl_raw(dataset / "ctl" / "raw_train.tsv").records, read_ctl_raw(dataset / "ctl" / "raw_test.tsv").records


def test_build_shape_dtype_rows_and_table(dataset):
    train, test = annotations(dataset)
    store = build(dataset)
    n = len(train) + len(test)
    assert len(store) == n
    assert store.images.shape == (n, SIZE, SIZE, 3)
    assert store.images.dtype == np.uint8
    assert isinstance(store.images, np.memmap)
    assert (store.path / IMAGES).stat().st_size == n * SIZE * SIZE * 3
    assert store.path == dataset / "ctl" / "store" / f"ctl-{SIZE}px"
    header = (store.path / TABLE).read_text().splitlines()[0].split("\t")
    assert tuple(header) == TABLE_COLUMNS == ("row_id", "key", "group", "category", "split", "source", "x", "y", "w", "h", "style")
    table = store.table
    assert np.array_equal(table.positions, np.arange(n))
    assert [int(line.split("\t")[0]) for line in (store.path / TABLE).read_text().splitlines()[1:]] == list(range(n))
    assert list(table.keys) == [item.key for item in train + test]
    assert list(table.groups) == [item.signature for item in train + test]
    assert list(table.categories) == [item.label for item in train + test]
    assert list(table.splits) == ["train"] * len(train) + ["test"] * len(test)
    assert all(Path(s) == dataset / "ctl" / "images" / f"{g}.jpg" for s, g in zip(table.image_paths, table.groups))
    assert all(s != "" for s in table.styles)
    assert table.row_of(train[3].key) == 3
    spec = table.spec(len(train))
    assert (spec.key, spec.split) == (test[0].key, "test")
    assert spec.box == pytest.approx((test[0].x, test[0].y, test[0].w, test[0].h), abs=1e-7)
    manifest = json.loads((store.path / MANIFEST).read_text())
    assert (manifest["size"], manifest["count"], manifest["fingerprint"]) == (SIZE, n, store.fingerprint)
    assert manifest["report"]["products"] == n and manifest["report"]["excluded_products"] == 0


def test_crops_are_the_boxes_of_their_collages(dataset):
    store = build(dataset)
    for row in (0, 7, len(store) - 1):
        spec = store.table.spec(row)
        with Image.open(spec.image_path) as image:
            expected = crop_square(to_rgb(image), spec.box, SIZE)
        assert np.array_equal(store.images[row], expected)
    # read() returns any order of rows, matching the memory map.
    rows = np.array([5, 1, 5, len(store) - 1])
    assert np.array_equal(store.read(rows), np.asarray(store.images)[rows])


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (0 when nothing of it is mapped in)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_read_matches_the_memory_map_and_leaves_no_page_of_it_resident(dataset):
    store = build(dataset)
    images = np.fromfile(store.path / IMAGES, dtype=np.uint8).reshape(store.images.shape)  # read, not mapped
    rng = np.random.default_rng(0)
    for rows in (
        rng.integers(0, len(store), 50),  # random, with repeats
        np.arange(len(store))[::-1],  # every row, descending
        np.array([len(store) - 1]),
        np.array([], dtype=np.int64),
    ):
        got = store.read(rows)
        assert got.shape == (len(rows), SIZE, SIZE, 3) and got.dtype == np.uint8 and got.flags.writeable
        assert np.array_equal(got, images[rows])
        assert _mapped_kib(store.path / IMAGES) == 0  # flat RSS: read() drops the pages it touched
    for bad in ([-1], [len(store)]):
        with pytest.raises(IndexError):
            store.read(np.array(bad))


def test_read_into_a_buffer_and_the_resident_copy_of_every_crop(dataset, monkeypatch):
    """``read(out=)`` fills a reused buffer (the device store's pinned staging) with exactly ``read``'s
    crops; loading the whole store in chunks, the last one short, each read by several threads (more
    threads than some parts have rows), gives every crop in row order."""
    store = build(dataset)
    rows = np.random.default_rng(1).integers(0, len(store), 40)
    buffer = np.full((len(rows), SIZE, SIZE, 3), 7, dtype=np.uint8)
    assert store.read(rows, out=buffer) is buffer and np.array_equal(buffer, store.read(rows))
    ascending = np.sort(rows)
    assert np.array_equal(store.read(ascending, out=buffer), store.read(ascending))
    read_only = buffer.copy()
    read_only.flags.writeable = False
    for bad in (buffer[:, :, :, :2], np.zeros((len(rows), SIZE, SIZE, 3), dtype=np.int16), buffer[::-1], read_only):
        with pytest.raises(ValueError, match=r"out must be a writable C-contiguous uint8 array of shape \(40, 16, 16, 3\)"):
            store.read(rows, out=bad)
    images = np.fromfile(store.path / IMAGES, dtype=np.uint8).reshape(store.images.shape)
    monkeypatch.setattr(device_store, "COPY_BYTES", 8 * SIZE * SIZE * 3)  # 8 rows a chunk
    assert len(store) % 8, "the last chunk must be short"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # cuda: the pinned double-buffered copy
    for device in devices:
        # 3 threads: parts of 2 or 3 rows, and of 1 in a short last chunk
        resident = device_store.ResidentPixels.load(store, torch.device(device), share=1.0, threads=3)
        assert resident.wait() > 0 and resident.on_device and np.array_equal(resident.pixels.cpu().numpy(), images)


def test_reads_wait_only_for_the_chunks_their_rows_are_in(dataset, monkeypatch):
    """The load goes on in the background: a read of the first chunk's rows returns while a later chunk
    is held back, a read that needs it waits for it, and a failed read is a one-line error naming the
    store, raised to the reader that waits for its rows."""
    store = build(dataset)
    images = np.fromfile(store.path / IMAGES, dtype=np.uint8).reshape(store.images.shape)
    monkeypatch.setattr(device_store, "COPY_BYTES", 8 * SIZE * SIZE * 3)  # 8 rows a chunk
    release, real_read = threading.Event(), device_store._read_chunk

    def held(store, first, last, out, pool, threads):
        if first >= 16:  # the third chunk on waits for the test
            assert release.wait(30)
        real_read(store, first, last, out, pool, threads)

    monkeypatch.setattr(device_store, "_read_chunk", held)
    resident = device_store.ResidentPixels.load(store, torch.device("cpu"), share=1.0)
    early = torch.tensor([15, 0, 9])
    assert np.array_equal(resident.gather(early).numpy(), images[early.numpy()])
    waiting = threading.Thread(target=lambda: resident.gather(torch.tensor([3, len(store) - 1])))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and resident._loading is not None  # it waits for the last chunk
    release.set()
    waiting.join(30)
    assert not waiting.is_alive() and resident._loading is None
    assert np.array_equal(resident.pixels.numpy(), images)

    def failing(store, first, last, out, pool, threads):
        if first >= 8:
            raise OSError("disk gone")
        real_read(store, first, last, out, pool, threads)

    monkeypatch.setattr(device_store, "_read_chunk", failing)
    resident = device_store.ResidentPixels.load(store, torch.device("cpu"), share=1.0)
    assert np.array_equal(resident.read(np.arange(8)).numpy(), images[:8])
    with pytest.raises(CtlError, match=rf"device store: loading {re.escape(str(store.path))} failed: disk gone"):
        resident.read(np.array([8]))


def test_a_store_file_cut_short_is_an_error_not_old_pixels(dataset, monkeypatch):
    """A read the kernel returns in parts (reads of over 2 GiB) is completed; a file that ends early is
    a one-line error naming it, not a buffer that still holds an earlier read's crops."""
    store = build(dataset)
    rows = np.arange(len(store))
    real = os.preadv
    monkeypatch.setattr(store_module.os, "preadv", lambda fd, buffers, offset: real(fd, [buffers[0][:1000]], offset))
    assert np.array_equal(store.read(rows), np.fromfile(store.path / IMAGES, dtype=np.uint8).reshape(store.images.shape))
    monkeypatch.setattr(store_module.os, "preadv", lambda fd, buffers, offset: 0)
    with pytest.raises(CtlError, match=r"images\.u8 ends at byte 0, before the"):
        store.read(rows)


def test_stl_store_takes_whole_product_images(dataset):
    store = StlSource(dataset / "stl").open_store(SIZE, workers=1)
    products = json.loads((dataset / "stl" / "fashion-cat.json").read_text())
    assert len(store) == len(products)
    assert set(store.table.keys) == set(products)
    assert set(store.table.splits) == {"catalog"}
    assert np.isnan(store.table.boxes).all()
    with Image.open(store.table.image_paths[0]) as image:
        assert np.array_equal(store.images[0], crop_square(to_rgb(image), None, SIZE))


def test_reopening_is_a_no_op(dataset):
    store = build(dataset)
    images_stat = (store.path / IMAGES).stat()
    manifest_text = (store.path / MANIFEST).read_text()
    again = build(dataset)
    assert again.fingerprint == store.fingerprint
    assert (store.path / IMAGES).stat().st_mtime_ns == images_stat.st_mtime_ns
    assert (store.path / IMAGES).stat().st_ino == images_stat.st_ino
    assert (store.path / MANIFEST).read_text() == manifest_text
    # Touching an annotation without changing it leaves the store alone: it is fingerprinted by content.
    os.utime(dataset / "ctl" / "raw_train.tsv", ns=(1, 1))
    assert build(dataset).fingerprint == store.fingerprint
    assert (store.path / IMAGES).stat().st_ino == images_stat.st_ino


def test_fingerprint_hashes_each_products_fields_as_stores_built_before_did(tmp_path):
    """The fingerprint reads each field of a product without dataclasses.astuple's deep copy (20 s at
    the release's scale): the bytes hashed must stay those astuple gave, or every existing store
    would be rebuilt."""
    import hashlib
    from dataclasses import astuple

    from ctl_lightning.data.store import STORE_VERSION, fingerprint

    specs = [
        ProductSpec("a@0,0,1,1", "a", "Shoes", "train", str(tmp_path / "a.jpg"), (0.0, 0.25, 0.5, 1.0), "s1"),
        ProductSpec("b", "b", "Bags", "catalog", str(tmp_path / "b.jpg"), None),
    ]
    digest = hashlib.sha256(f"store-v{STORE_VERSION}|size=64".encode())
    for spec in specs:
        digest.update("\x1f".join(map(str, astuple(spec))).encode() + b"\x1e")
        digest.update(f"{spec.image_path}=missing".encode())
    assert fingerprint(specs, 64) == digest.hexdigest()[:20]


def test_size_change_rebuilds(dataset):
    small = build(dataset, size=SIZE)
    large = build(dataset, size=24)
    assert large.path != small.path
    assert large.images.shape[1:] == (24, 24, 3) and large.fingerprint != small.fingerprint
    # Same folder, other size: rebuilt in place.
    specs, _ = ctl_source(dataset).product_specs()
    rebuilt = ProductStore.ensure(specs, small.path, 12, workers=1)
    assert rebuilt.images.shape == (len(specs), 12, 12, 3)
    assert ProductStore.open(small.path).size == 12


def test_touching_an_image_rebuilds(dataset):
    store = build(dataset)
    inode = (store.path / IMAGES).stat().st_ino
    image = Path(store.table.image_paths[0])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    again = build(dataset)
    assert again.fingerprint != store.fingerprint
    assert (again.path / IMAGES).stat().st_ino != inode


def test_replacing_an_image_rebuilds_with_its_pixels(dataset):
    store = build(dataset)
    unopened = build(dataset)
    assert store.images.shape[0] == len(store)  # mapped before the rebuild
    source = Path(store.table.image_paths[0])
    rows = np.flatnonzero(store.table.image_paths == str(source))
    with Image.open(source) as image:
        size = image.size
    Image.new("RGB", size, (0, 0, 255)).save(source)
    again = build(dataset)
    assert again.fingerprint != store.fingerprint
    crops = np.asarray(again.images)[rows]
    with Image.open(source) as image:
        expected = np.stack([crop_square(to_rgb(image), store.table.spec(r).box, SIZE) for r in rows])
    assert np.array_equal(crops, expected)
    blue = (crops[..., 2] > 200) & (crops[..., 0] < 30)
    assert blue.mean() > 0.5  # all blue, except the white that pads boxes to squares
    assert not np.array_equal(np.asarray(store.images)[rows], crops)
    # A store object that had not mapped its pixels yet refuses to read the rebuilt file under its old table.
    with pytest.raises(CtlError, match="rebuilt or removed while in use"):
        _ = unopened.images


def test_changing_an_annotation_rebuilds(dataset):
    store = build(dataset)
    path = dataset / "ctl" / "raw_test.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    again = build(dataset)
    assert again.fingerprint != store.fingerprint
    assert len(again) == len(store) - 1
    assert again.images.shape[0] == len(store) - 1


def test_a_crashed_build_is_never_read_as_complete(dataset, monkeypatch):
    store = build(dataset)
    old_fp, old_count = store.fingerprint, len(store)
    # Make the inputs change, then let the rebuild die just before it would rename its folder.
    path = dataset / "ctl" / "raw_test.tsv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-2]))

    def crash(tmp, final):
        raise KeyboardInterrupt("killed during prepare")

    monkeypatch.setattr(store_module, "replace_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        build(dataset)
    monkeypatch.undo()
    # An interrupted build removes its own folder (a killed one leaves it: see tests/test_faults.py).
    assert not list(store.path.parent.glob(f".{store.path.name}.tmp-*"))
    # The old store is intact and still the one at the path; it does not match the new inputs.
    assert ProductStore.open(store.path).fingerprint == old_fp
    specs, _ = ctl_source(dataset).product_specs()
    assert ProductStore.current(store.path, store_module.fingerprint(specs, SIZE)) is None
    # The next run builds properly and clears the crashed build's folder.
    again = build(dataset)
    assert again.fingerprint != old_fp and len(again) == old_count - 2
    assert not list(store.path.parent.glob(f".{store.path.name}.tmp-*"))


def test_a_leftover_temporary_folder_without_a_store_is_ignored(dataset):
    store = build(dataset)
    fp = store.fingerprint
    # A build killed before its rename: only the temporary folder exists, manifest and all.
    crashed = store.path.with_name(f".{store.path.name}.tmp-999999")
    os.replace(store.path, crashed)
    with open(crashed / IMAGES, "r+b") as handle:
        handle.truncate(100)  # half-written
    specs, _ = ctl_source(dataset).product_specs()
    assert ProductStore.current(store.path, fp) is None
    with pytest.raises(CtlError, match="not a product store"):
        ProductStore.open(store.path)
    rebuilt = ProductStore.ensure(specs, store.path, SIZE, workers=1)
    assert rebuilt.fingerprint == fp
    assert (rebuilt.path / IMAGES).stat().st_size == len(specs) * SIZE * SIZE * 3
    assert not crashed.exists()


def test_a_damaged_store_is_rebuilt(dataset):
    store = build(dataset)
    expected = np.array(store.images)
    (store.path / IMAGES).write_bytes(b"")
    with pytest.raises(CtlError, match="size does not match"):
        ProductStore.open(store.path)
    again = build(dataset)
    assert np.array_equal(np.asarray(again.images), expected)
    os.remove(again.path / IMAGES)
    assert np.array_equal(np.asarray(build(dataset).images), expected)


def test_missing_and_corrupt_images_are_excluded_counted_and_listed(dataset):
    train, test = annotations(dataset)
    images = dataset / "ctl" / "images"
    signatures = list(dict.fromkeys(item.signature for item in train))
    missing, garbage, truncated = (images / f"{s}.jpg" for s in signatures[:3])
    os.remove(missing)
    garbage.write_bytes(b"this is not a jpeg")
    truncated.write_bytes(truncated.read_bytes()[:400])
    affected = sum(1 for item in train + test if item.signature in signatures[:3])
    store = ctl_source(dataset).open_store(SIZE, workers=2)
    report = store.manifest["report"]
    assert report["excluded_products"] == affected
    assert len(store) == len(train) + len(test) - affected
    assert set(store.table.groups).isdisjoint(signatures[:3])
    assert report["bad_images"][str(missing)] == "missing image"
    assert report["bad_images"][str(garbage)].startswith("corrupt image (UnidentifiedImageError: cannot identify image file")
    assert report["bad_images"][str(truncated)].startswith("corrupt image (OSError:")
    assert set(report["bad_images"]) == {str(missing), str(garbage), str(truncated)}
    lines = BuildStats(**report).lines()
    assert f"excluded {affected} products from 3 unreadable images:" in lines
    assert f"  {missing}: missing image" in lines
    # Rows stay 0..N-1 and the crops still match their metadata.
    assert np.array_equal(store.table.positions, np.arange(len(store)))
    spec = store.table.spec(len(store) - 1)
    with Image.open(spec.image_path) as image:
        assert np.array_equal(store.images[-1], crop_square(to_rgb(image), spec.box, SIZE))


def test_no_readable_image_is_an_error(dataset):
    shutil.rmtree(dataset / "ctl" / "images")
    with pytest.raises(CtlError, match="no product image could be read"):
        build(dataset)
    assert not (dataset / "ctl" / "store" / f"ctl-{SIZE}px").exists()


def test_skipped_annotation_rows_reach_the_manifest_even_without_a_rebuild(dataset):
    store = build(dataset, on_error="skip")
    assert store.manifest["report"]["annotation_skips"] == {}
    path = dataset / "ctl" / "raw_train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:2], "zz\t0.1\tnan\t0.1\t0.1\tShoes\n", "zz\t0.1\t0.1\t0.1\t0.1\t\n", *lines[2:]]))
    inode = (store.path / IMAGES).stat().st_ino
    again = build(dataset, on_error="skip")
    assert again.fingerprint == store.fingerprint  # the same products: crops are reused
    assert (again.path / IMAGES).stat().st_ino == inode
    expected = {str(path): {"non-finite coordinate": 1, "empty label": 1}}
    assert again.manifest["report"]["annotation_skips"] == expected
    assert json.loads((again.path / MANIFEST).read_text())["report"]["annotation_skips"] == expected


def test_store_pickles_without_the_memmap(dataset):
    store = build(dataset, size=48)
    assert store.images.sum() > 0  # opened in this process
    data = pickle.dumps(store)
    assert len(data) < store.images.nbytes / 4
    copy = pickle.loads(data)
    assert copy._images is None
    assert np.array_equal(np.asarray(copy.images), np.asarray(store.images))
    assert copy.fingerprint == store.fingerprint and len(copy) == len(store)


def test_open_rejects_a_non_store(tmp_path):
    with pytest.raises(CtlError, match="not a product store"):
        ProductStore.open(tmp_path)
    spec = ProductSpec("k", "g", "Shoes", "train", str(tmp_path / "x.jpg"), None)
    Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
    with pytest.raises(CtlError, match="image size must be at least 8 px"):
        ProductStore.ensure([spec], tmp_path / "store", 4, workers=1)


# --------------------------------------------------------------------------- conversion and cropping


def roundtrip(image: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    buffer.seek(0)
    return Image.open(buffer)


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    return tuple(int(v) for v in np.asarray(rgb)[xy[1], xy[0]])


def test_to_rgb_grayscale_and_cmyk():
    assert pixel(Image.new("L", (4, 4), 77)) == (77, 77, 77)
    assert pixel(roundtrip(Image.new("L", (4, 4), 77), "PNG")) == (77, 77, 77)
    assert pixel(Image.new("1", (4, 4), 1)) == (255, 255, 255)
    assert pixel(Image.new("CMYK", (4, 4), (0, 255, 255, 0))) == (255, 0, 0)
    jpeg = roundtrip(Image.new("CMYK", (8, 8), (255, 0, 255, 0)), "JPEG", quality=100)
    assert jpeg.mode == "CMYK"
    assert np.abs(np.array(pixel(jpeg)) - (0, 255, 0)).max() <= 3


def test_to_rgb_composites_alpha_on_white():
    assert pixel(Image.new("RGBA", (4, 4), (255, 0, 0, 0))) == (255, 255, 255)
    assert pixel(Image.new("RGBA", (4, 4), (255, 0, 0, 255))) == (255, 0, 0)
    half = pixel(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert all(abs(v - 127) <= 1 for v in half)
    assert pixel(Image.new("LA", (4, 4), (0, 0))) == (255, 255, 255)
    assert pixel(Image.new("LA", (4, 4), (40, 255))) == (40, 40, 40)
    assert pixel(roundtrip(Image.new("RGBA", (4, 4), (0, 0, 255, 0)), "PNG")) == (255, 255, 255)


def test_to_rgb_palette_with_transparency():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    for candidate in (image, roundtrip(image, "PNG"), roundtrip(image, "GIF")):
        assert pixel(candidate, (0, 0)) == (255, 255, 255)  # transparent index -> white, not black
        assert pixel(candidate, (1, 1)) == (200, 30, 30)
    opaque = Image.new("P", (4, 4), 1)
    opaque.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    assert pixel(opaque) == (200, 30, 30)


def test_to_rgb_transparency_chunk_of_l_and_rgb():
    assert pixel(roundtrip(Image.new("L", (4, 4), 100), "PNG", transparency=100)) == (255, 255, 255)
    assert pixel(roundtrip(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG", transparency=(1, 2, 3))) == (255, 255, 255)
    assert pixel(roundtrip(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG", transparency=(9, 9, 9))) == (1, 2, 3)


@pytest.mark.parametrize("fmt", [None, "PNG", "TIFF"])
def test_to_rgb_16_bit(fmt):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    if fmt:
        image = roundtrip(image, fmt)
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_to_rgb_16_bit_big_endian_and_32_bit_int():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    assert np.asarray(to_rgb(big))[0, :, 0].tolist() == [0, 128, 255]
    as_int = Image.fromarray(values.astype(np.int32), "I")
    assert np.asarray(to_rgb(as_int))[0, :, 0].tolist() == [0, 128, 255]


def test_crop_square_takes_the_box():
    W, H = 200, 100
    image = np.full((H, W, 3), 255, np.uint8)
    image[20:60, 50:90] = (220, 0, 0)  # a red 40x40 square
    image[60:90, 120:180] = (0, 0, 220)  # a blue 60x30 rectangle
    image = Image.fromarray(image)
    red = crop_square(image, (50 / W, 20 / H, 40 / W, 40 / H), 16)
    assert red.shape == (16, 16, 3) and red.dtype == np.uint8
    assert (red == (220, 0, 0)).all()
    blue = crop_square(image, (120 / W, 60 / H, 60 / W, 30 / H), 24)
    # Wide boxes are padded with white above and below, not stretched.
    assert (blue[8:16] == (0, 0, 220)).all()
    assert (blue[:5] == 255).all() and (blue[-5:] == 255).all()
    assert not (blue == (220, 0, 0)).all(axis=-1).any()
    # No box: the whole image, padded to a square.
    whole = crop_square(image, None, 20)
    assert (whole[:4] == 255).all() and (whole[-4:] == 255).all()
    assert (whole[8, 6] == (220, 0, 0)).all()


def test_crop_square_keeps_a_thin_box_on_the_border():
    image = np.full((100, 100, 3), 255, np.uint8)
    image[:, 99] = 0
    image[99, :] = 0
    # x * W = 99.5 rounds to 100, the image's edge: the crop must still hold the last column.
    column = crop_square(Image.fromarray(image), (0.995, 0.0, 0.005, 1.0), 100)
    assert (column[:, 49] == 0).all()  # the black column, centred in white
    assert (column[:, :49] == 255).all() and (column[:, 50:] == 255).all()
    row = crop_square(Image.fromarray(image), (0.0, 0.995, 1.0, 0.005), 100)
    assert (row[49] == 0).all() and (row[:49] == 255).all()
