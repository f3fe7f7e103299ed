"""Folder masks: palette and lossy (JPEG) masks, masks paired by relative path, missing layout folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.ingest.readers import InputRejected, Rejected, SourceRootMissing
from medtrinity_assets.ingest.readers.image_folder import list_folder
from medtrinity_assets.ingest.readers.nifti import list_msd
from medtrinity_assets.ingest.readers.pil import read_label_image, read_pil
from medtrinity_assets_tests.sources_builders import SKIMAGE_DATA, make_spec, msd_source, spy_on_listings

SIZE = 96
MAX_PIXELS = 10_000_000


def _grey(name: str, y0: int = 100, x0: int = 100) -> np.ndarray:
    """A textured SIZE x SIZE crop of a scikit-image picture (distinct crops: no duplicates)."""
    arr = np.asarray(Image.open(SKIMAGE_DATA / name).convert("L"))
    return np.ascontiguousarray(arr[y0 : y0 + SIZE, x0 : x0 + SIZE])


def _write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _disc(cy: int = 48, cx: int = 48, r: int = 25) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _palette_mask(path: Path, labels: np.ndarray) -> Path:
    """A mode-P PNG whose indices are ``labels``; the palette colours differ from the indices."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0] * 256
    palette[3 * 3 : 3 * 3 + 3] = [10, 200, 30]  # index 3: green
    palette[7 * 3 : 7 * 3 + 3] = [250, 0, 0]  # index 7: red
    im.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _jpeg(path: Path, arr: np.ndarray, quality: int = 75, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).convert(mode).save(path, "JPEG", quality=quality)
    return path


def _two_labels() -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[10:40, 10:40] = 3
    labels[50:90, 45:85] = 7
    return labels


def _ingest(tmp_path: Path, root: Path, name: str = "fold"):
    spec = make_spec(tmp_path, name, "image_folder", root, modality="Microscopy", organ="cell culture")
    res = ingest_source(spec, tmp_path / f"out_{name}", workers=1)
    rows = {r["relpath"]: r for r in res.manifest.to_dicts()}
    images = {r["record_id"]: r for r in res.images.to_dicts()}
    return rows, images


# --------------------------------------------------------------------------------------
# palette (mode P) masks


def test_palette_mask_gives_its_indices_as_labels(tmp_path):
    labels = _two_labels()
    path = _palette_mask(tmp_path / "m.png", labels)
    with Image.open(path) as im:
        assert im.mode == "P"
    got = read_label_image(path, MAX_PIXELS)
    assert got.dtype.kind == "i" and got.shape == labels.shape
    assert np.array_equal(got, labels)  # indices 3 and 7, not the colours' 200 and 250
    # an ordinary palette image is still read as its colours
    rgb = read_pil(path, MAX_PIXELS)
    assert rgb.shape == (SIZE, SIZE, 3) and tuple(rgb[60, 60]) == (250, 0, 0)


def test_palette_mask_labels_reach_the_images_table(tmp_path):
    root = tmp_path / "src"
    _write_image(root / "images" / "x.png", _grey("camera.png"))
    _palette_mask(root / "masks" / "x.png", _two_labels())
    rows, images = _ingest(tmp_path, root)
    assert rows["images/x.png"]["status"] == "ok"
    assert images[rows["images/x.png"]["record_id"]]["mask_labels"] == [3, 7]


def test_lossless_grey_label_map_is_unchanged(tmp_path):
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[:, 30:60], labels[:, 60:] = 85, 170
    got = read_label_image(_write_image(tmp_path / "m.png", labels), MAX_PIXELS)
    assert np.array_equal(got, labels)


# --------------------------------------------------------------------------------------
# lossy (JPEG) masks


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_binary_mask_is_binarised(tmp_path, mode, quality):
    disc = _disc()
    path = _jpeg(tmp_path / "m.jpg", disc * 255, quality, mode)
    assert len(np.unique(np.asarray(Image.open(path)))) > 2  # compression noise is there
    got = read_label_image(path, MAX_PIXELS)
    assert set(np.unique(got)) == {0, 1}
    assert (got.astype(bool) == disc).mean() > 0.995


def test_jpeg_blank_mask_is_empty(tmp_path):
    got = read_label_image(_jpeg(tmp_path / "m.jpg", np.zeros((SIZE, SIZE))), MAX_PIXELS)
    assert not got.any()


def test_jpeg_multilabel_mask_is_rejected(tmp_path):
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[:, 24:48], labels[:, 48:72], labels[:, 72:] = 85, 170, 255
    with pytest.raises(InputRejected) as exc:
        read_label_image(_jpeg(tmp_path / "m.jpg", labels, 95), MAX_PIXELS)
    assert exc.value.prefix == "lossy_mask" and "lossy" in exc.value.detail


def test_jpeg_colour_coded_mask_is_rejected(tmp_path):
    """Red and green regions would both become 255 (one label) if the channels were merged."""
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[10:40, 10:40] = (255, 0, 0)
    rgb[50:90, 45:85] = (0, 255, 0)
    with pytest.raises(InputRejected) as exc:
        read_label_image(_jpeg(tmp_path / "m.jpg", rgb, 95, "RGB"), MAX_PIXELS)
    assert exc.value.prefix == "lossy_mask"


def test_jpeg_masks_in_an_image_folder(tmp_path):
    root = tmp_path / "src"
    _write_image(root / "images" / "bin.png", _grey("camera.png"))
    _jpeg(root / "masks" / "bin.jpg", _disc() * 255, 60)
    _write_image(root / "images" / "multi.png", _grey("moon.png"))
    multi = np.zeros((SIZE, SIZE), np.uint8)
    multi[:, 30:60], multi[:, 60:] = 100, 200
    _jpeg(root / "masks" / "multi.jpg", multi, 95)
    rows, images = _ingest(tmp_path, root)
    assert rows["images/bin.png"]["status"] == "ok"
    assert images[rows["images/bin.png"]["record_id"]]["mask_labels"] == [1]  # not dozens
    assert rows["images/multi.png"]["status"] == "quarantined"
    assert rows["images/multi.png"]["reason"].startswith("lossy_mask: mask: ")


# --------------------------------------------------------------------------------------
# masks/ paired with images/ by relative path


def test_nested_masks_pair_by_relative_path(tmp_path):
    root = tmp_path / "src"
    _write_image(root / "images" / "a" / "x.png", _grey("camera.png"))
    _write_image(root / "images" / "b" / "x.png", _grey("moon.png"))
    _write_image(root / "images" / "c" / "x.png", _grey("coins.png", 50, 50))
    _write_image(root / "masks" / "a" / "x.png", _disc().astype(np.uint8))  # label 1
    _write_image(root / "masks" / "b" / "x.png", _disc(30, 60, 15).astype(np.uint8) * 2)  # label 2
    tasks = list_folder(root, [])
    assert not [t for t in tasks if isinstance(t, Rejected)]
    pairs = {t.relpath: t.mask_relpath for t in tasks}
    assert pairs == {
        "images/a/x.png": "masks/a/x.png",
        "images/b/x.png": "masks/b/x.png",
        "images/c/x.png": None,
    }
    rows, images = _ingest(tmp_path, root)
    labels = {rel: images[r["record_id"]]["mask_labels"] for rel, r in rows.items()}
    assert labels == {"images/a/x.png": [1], "images/b/x.png": [2], "images/c/x.png": []}


def test_flat_masks_and_ambiguous_mask_files(tmp_path):
    root = tmp_path / "src"
    for n in ("x", "y", "z"):
        _write_image(root / "images" / f"{n}.png", _grey("camera.png"))
    _write_image(root / "masks" / "x.png", _disc().astype(np.uint8))
    _jpeg(root / "masks" / "x.jpg", _disc() * 255)  # same key as masks/x.png: PNG (lossless) wins
    _jpeg(root / "masks" / "y.jpg", _disc() * 255)  # suffixes may differ from the image's
    _write_image(root / "masks" / "sub" / "z.png", _disc().astype(np.uint8))  # not masks/z.*
    tasks = list_folder(root, [])
    pairs = {t.relpath: t.mask_relpath for t in tasks}
    assert pairs == {"images/x.png": "masks/x.png", "images/y.png": "masks/y.jpg", "images/z.png": None}


# --------------------------------------------------------------------------------------
# missing layout folders fail the source


def test_missing_images_folder_fails_the_source(tmp_path):
    root = tmp_path / "src"
    _write_image(root / "masks" / "x.png", _disc().astype(np.uint8))
    _write_image(root / "x.png", _grey("camera.png"))  # at the root: not read by image_folder
    spec = make_spec(tmp_path, "flat", "image_folder", root)
    with pytest.raises(SourceRootMissing) as exc:
        ingest_source(spec, tmp_path / "out", workers=1)
    assert isinstance(exc.value, FileNotFoundError)
    msg = str(exc.value)
    assert msg.startswith("source 'flat': no images/ folder") and str(root.resolve()) in msg
    assert "image_folder" in msg
    with pytest.raises(SourceRootMissing, match=r"source 'flat': no images/ folder under .*expects images/"):
        list_folder(root, [], "flat")


def test_missing_imagesTr_folder_fails_the_source(tmp_path):
    root = msd_source(tmp_path / "msd")
    shutil.rmtree(root / "imagesTr")  # labelsTr/ and dataset.json only
    spec = make_spec(tmp_path, "msd", "nifti_msd", root)
    with pytest.raises(SourceRootMissing) as exc:
        ingest_source(spec, tmp_path / "out", workers=1)
    assert str(exc.value).startswith("source 'msd': no imagesTr/ folder") and "nifti_msd" in str(exc.value)
    with pytest.raises(SourceRootMissing, match="source 'msd': no imagesTr/"):
        list_msd(root, [], name="msd")


def test_test_only_msd_source_is_accepted(tmp_path):
    root = tmp_path / "msd"
    (root / "imagesTs").mkdir(parents=True)
    data = np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), root / "imagesTs" / "case_001.nii.gz")
    tasks = list_msd(root, [])
    assert [(t.relpath, t.split) for t in tasks] == [("imagesTs/case_001.nii.gz", "test")]


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A photo stored sideways with EXIF Orientation=6 (rotate 90° clockwise to view) is read
    upright, and its mask with the same tag stays aligned with it."""
    from PIL import Image

    from medtrinity_assets.ingest.readers.pil import read_label_image, read_pil

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", format="JPEG", quality=95, exif=exif)
    mask = np.zeros((40, 60), np.uint8)
    mask[:10, :20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png", format="PNG", exif=exif)
    img = read_pil(tmp_path / "photo.jpg", 10**6)
    lab = read_label_image(tmp_path / "mask.png", 10**6)
    assert img.shape == (60, 40, 3) and lab.shape == (60, 40)
    # rotated 90° clockwise: the stored top-left corner is now the top-right corner
    assert img[:20, -10:, 0].mean() > 200 and img[-20:, :10, 0].mean() < 50
    assert lab[:20, -10:].all() and lab.sum() == 200


def test_label_values_are_what_unique_gives():
    """Label maps' distinct values are counted in one pass (0..65535), else sorted: same answer."""
    import numpy as np

    from medtrinity_assets.ingest.readers.base import label_values

    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 3, (40, 40)), rng.integers(0, 3, (40, 40)).astype(np.uint8),
             np.array([255, 0, 255], np.uint16), np.zeros(0, np.int64), rng.integers(-2, 3, 9),
             rng.integers(0, 70_000, 100), (rng.random((5, 5)) * 3).astype(np.float32)]
    for arr in cases:
        got, want = label_values(arr), np.unique(arr)
        assert got.dtype == want.dtype and np.array_equal(got, want)


# --------------------------------------------------------------------------------------
# shards of an image folder: planned from the folders' listings, each looks at its own files


def _odd_folder(tmp_path: Path) -> Path:
    """Images in nested folders with masks of several suffixes, hidden entries, a non-image file,
    links inside the root, escaping and dangling links, and a linked folder (not followed)."""
    root, other = tmp_path / "src", tmp_path / "src" / "other"
    blank = np.zeros((8, 8), np.uint8)
    for rel in ["a.png", "b.jpg", "c/d.png", "c/e.tif", "c/f/g.png", "h.png", "i.png", "j.png", ".hidden.png",
                ".cache/k.png", "notes.txt"]:
        _write_image(root / "images" / rel, blank) if not rel.endswith(".txt") else None
    (root / "images" / "notes.txt").write_text("not an image")
    for rel in ["a.png", "a.jpg", "c/d.jpg", "c/f/g.png", "j.tif", "zz.png"]:
        _write_image(root / "masks" / rel, blank)
    _write_image(other / "target.png", blank)
    (root / "images" / "inside.png").symlink_to(other / "target.png")
    (root / "images" / "escapes.png").symlink_to("/etc/hostname")
    (root / "images" / "dangling.png").symlink_to(root / "nowhere.png")
    (root / "images" / "linked").symlink_to(other, target_is_directory=True)
    (root / "masks" / "h.png").symlink_to(other / "target.png")
    (root / "masks" / "i.png").symlink_to("/etc/hostname")
    return root


@pytest.mark.parametrize("inside", [True, False])
def test_shards_of_a_linked_images_folder_are_resolved_as_the_full_scan(tmp_path, monkeypatch, inside):
    """``images/`` and ``masks/`` as links: into the root, each file lies where the link leads; out of
    it, every file escapes the root and is refused, in every shard as in the full scan."""
    from collections import Counter

    from medtrinity_assets.ingest.pipeline import _scan_shard
    from medtrinity_assets.ingest.readers import reader_for
    from medtrinity_assets.ingest.shards import plan_shards

    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path / "cache"))
    root = (tmp_path / "src").resolve()
    root.mkdir()
    where = root if inside else tmp_path / "elsewhere"
    for folder in ("data", "m"):
        for k in range(3):
            _write_image(where / folder / f"{k}.png", np.zeros((8, 8), np.uint8))
    (root / "images").symlink_to(where / "data", target_is_directory=True)
    (root / "masks").symlink_to(where / "m", target_is_directory=True)
    spec = make_spec(tmp_path, "linked", "image_folder", root, shard_size=2)
    reader = reader_for("image_folder")
    serial = lambda fn, items: map(fn, items)  # noqa: E731
    full = reader.scan(spec, root, serial).tasks
    assert len(full) == 3 and all(isinstance(t, Rejected) for t in full) != inside
    reference = plan_shards(Counter(t.relpath for t in full).items(), 2, reader.shard_unit)
    for shard in range(reference.count):
        assert _scan_shard(spec, root, shard, serial)[1].tasks == [t for t in full if reference.keeps(shard)(t.relpath)]


@pytest.mark.parametrize("include", [[], ["*.png", "c/*"]])
def test_shards_of_an_image_folder_equal_the_full_scan_cut(tmp_path, monkeypatch, include):
    """Each shard's tasks (images ranked in its stretch, with their masks) are the full scan's cut, with
    the folder memo cold and warm: names sorting around a folder's (``c.png``, ``c-1.png``, ``c0.png``
    beside ``c/``), a folder that cannot be listed (an input sorting as its name), links, hidden
    entries, masks of several suffixes. A warm plan lists no settled folder without subfolders."""
    from collections import Counter

    from medtrinity_assets.ingest.pipeline import _scan_shard
    from medtrinity_assets.ingest.readers import folder_units, reader_for
    from medtrinity_assets.ingest.shards import plan_shards

    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path / "cache"))
    root = _odd_folder(tmp_path).resolve()
    blank = np.zeros((8, 8), np.uint8)
    for rel in ["c.png", "c-1.png", "c0.png", "u/v.png", "w/x/y.png"]:
        _write_image(root / "images" / rel, blank)
    _write_image(root / "masks" / "c-1.png", blank)
    listed = spy_on_listings(monkeypatch, root, refuse="images/u")
    spec = make_spec(tmp_path, "odd", "image_folder", root, shard_size=3, include=include)
    reader = reader_for("image_folder")
    serial = lambda fn, items: map(fn, items)  # noqa: E731
    full = reader.scan(spec, root, serial).tasks
    reference = plan_shards(Counter(t.relpath for t in full).items(), 3, reader.shard_unit)
    assert reference.count >= 4 and any(t.relpath == "images/u" and isinstance(t, Rejected) for t in full)
    assert len([t for t in full if getattr(t, "mask_relpath", None)]) >= (4 if not include else 2)

    def every_shard() -> None:
        for shard in range(reference.count + 1):
            plan, scan = _scan_shard(spec, root, shard, serial)
            assert plan.count == reference.count
            assert scan.tasks == [t for t in full if shard < reference.count and reference.keeps(shard)(t.relpath)]

    every_shard()  # a cold memo: every folder changed just now, none remembered
    monkeypatch.setattr(folder_units, "SETTLE_S", 0.0)  # as if 2 s had passed since the tree was made
    every_shard()  # remembers the settled folders
    listed.clear()
    every_shard()  # plans from remembered counts
    listed.clear()
    assert _scan_shard(spec, root, 0, serial)[0].count == reference.count
    assert {"images", "images/c"} <= set(listed), "folders with subfolders are listed"
    assert not {"images/w/x", "images/c/f", "masks/c/f"} & set(listed), "other shards' settled leaf folders are not"
