"""Imaging readers: safe decode, reason prefixes, PHI helpers (no ingest pipeline here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medtrinity_assets.ingest.dedup import hamming, phash
from medtrinity_assets.ingest.readers import (
    REASONS,
    InputRejected,
    direction_letter,
)
from medtrinity_assets.ingest.readers import dicom as dcm
from medtrinity_assets.ingest.readers.files import list_files, resolve_inside
from medtrinity_assets.ingest.readers.pil import read_pil
from medtrinity_assets.ingest.slicing import output_size, resize_mask
from medtrinity_assets.privacy import dicom_identifier_values, scrub_text
from medtrinity_assets_tests.sources_builders import SKIMAGE_DATA, pydicom_file, truncated_copy


def _decode(path: Path) -> np.ndarray:
    return dcm.decode_pixels(dcm.read_dataset(path, header_only=False))


def test_identifier_values_cover_names_ids_dates():
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    values = dicom_identifier_values(ds)
    assert str(ds.PatientName) in values and str(ds.PatientID) in values
    assert str(ds.InstitutionName) in values and str(ds.StudyDate) in values
    assert "CompressedSamples" in values  # a component of the ^-separated person name
    assert "CT1" not in values  # codes with digits are not name components


def test_scrub_text_removes_dates_digit_runs_person_names():
    text = "CT ABDOMEN Doe^Jane 2021-03-04 acc 12345678 on 03/04/2021 / John Smith"
    out = scrub_text(text, {"John Smith"})
    assert "Doe" not in out and "Jane" not in out and "2021" not in out and "12345678" not in out
    assert "John" not in out and out.startswith("CT ABDOMEN")


@pytest.mark.parametrize(
    "compressed", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_transfer_syntaxes_decode_like_the_original(compressed):
    ref = _decode(pydicom_file("MR_small.dcm"))
    got = _decode(pydicom_file(compressed))
    assert got.shape == ref.shape == (1, 64, 64)
    assert np.array_equal(got, ref)


def test_jpeg2000_ultrasound_and_multiframe_decode():
    us = _decode(pydicom_file("US1_J2KR.dcm"))
    assert us.shape == (1, 480, 640, 3)
    mf = _decode(pydicom_file("emri_small.dcm"))
    assert mf.shape == (10, 64, 64)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OBXXXX1A_rle_2frame.dcm"])
def test_palette_colour_becomes_the_lookup_tables_rgb(name):
    """PALETTE COLOR pixels are indices: the decoded image is what the red/green/blue tables say."""
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(pydicom_file(name))
    got = _decode(pydicom_file(name))
    ref = apply_color_lut(ds.pixel_array, ds)  # 16-bit table entries
    assert got.dtype == np.uint8 and got.shape == (int(ds.get("NumberOfFrames", 1) or 1), 600, 800, 3)
    assert np.array_equal(got, (ref >> 8).astype(np.uint8).reshape(got.shape))
    assert not np.array_equal(got[..., 0], got[..., 2])  # real colour, not grey indices


def test_garbage_is_not_dicom(tmp_path):
    p = tmp_path / "junk.dcm"
    p.write_bytes(os.urandom(4096))
    h = dcm.scan_header("junk.dcm", str(p), 10**9)
    assert h.reason.startswith("not_dicom:")


def test_truncated_header_reads_but_pixels_do_not(tmp_path):
    p = truncated_copy(pydicom_file("CT_small.dcm"), tmp_path / "t.dcm")
    h = dcm.scan_header("t.dcm", str(p), 10**9)
    assert h.reason is None  # the header alone looks fine
    with pytest.raises(InputRejected) as exc:
        _decode(p)
    assert exc.value.reason.startswith("truncated:")


def test_unsupported_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    p = tmp_path / "mpeg.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(InputRejected) as exc:
        _decode(p)
    assert exc.value.prefix == "unsupported_transfer_syntax"


def test_pixel_budget_checked_from_header():
    h = dcm.scan_header("CT_small.dcm", str(pydicom_file("CT_small.dcm")), 100)
    assert h.reason.startswith("too_many_pixels:")


def test_seg_without_its_images_is_quarantined():
    headers = [dcm.scan_header("liver.dcm", str(pydicom_file("liver.dcm")), 10**9)]
    assert headers[0].is_seg and headers[0].seg_refs
    (rejected,) = dcm.group_headers(headers, 10**9)
    assert isinstance(rejected, dcm.Rejected) and rejected.reason.startswith("seg_without_source:")


def test_resolve_inside_rejects_escapes(tmp_path):
    root = (tmp_path / "root").resolve()
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    assert resolve_inside(root, "a.png") == root / "a.png"
    for bad in ("../x.png", "/etc/passwd", "sub/../../x.png"):
        with pytest.raises(InputRejected) as exc:
            resolve_inside(root, bad)
        assert exc.value.prefix == "path_escapes_root"
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    found = {f.relpath: f for f in list_files(root)}
    assert found["link.png"].path is None and found["link.png"].reason.startswith("path_escapes_root:")
    assert found["a.png"].path is not None


def test_read_pil_limits_and_format_whitelist(tmp_path):
    with pytest.raises(InputRejected) as exc:
        read_pil(SKIMAGE_DATA / "retina.jpg", 1000)
    assert exc.value.prefix == "too_many_pixels"
    bmp = tmp_path / "fake.png"
    Image.new("L", (8, 8)).save(bmp, format="BMP")
    with pytest.raises(InputRejected) as exc:
        read_pil(bmp, 10**6)
    assert exc.value.prefix == "undecodable"
    trunc = truncated_copy(SKIMAGE_DATA / "ihc.png", tmp_path / "t.png", 0.5)
    with pytest.raises(InputRejected) as exc:
        read_pil(trunc, 10**8)
    assert exc.value.prefix in ("truncated", "undecodable")
    rgb = read_pil(SKIMAGE_DATA / "retina.jpg", 10**8)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


def test_phash_is_stable_and_discriminates():
    img = np.asarray(Image.open(SKIMAGE_DATA / "camera.png"))
    h1 = phash(img)
    assert 0 <= h1 < 2**64
    assert hamming(h1, phash(img.copy())) == 0
    small = np.asarray(Image.fromarray(img).resize((256, 256)))
    assert hamming(h1, phash(small)) <= 4  # resizing keeps the perceptual hash
    other = np.asarray(Image.open(SKIMAGE_DATA / "ihc.png").convert("L"))
    assert hamming(h1, phash(other)) > 10
    assert hamming(f"{h1:016x}", h1) == 0


def test_phash_uses_the_orthonormal_dct():
    """The numpy DCT matrix gives the same bits as scipy's 2D DCT-II (the textbook pHash)."""
    from scipy.fft import dctn

    from medtrinity_assets.ingest.dedup import grey32 as _grey32
    from medtrinity_assets.ingest.dedup import phash_bits as _phash_bits

    rng = np.random.default_rng(3)
    images = [np.asarray(Image.open(SKIMAGE_DATA / n)) for n in ("camera.png", "ihc.png", "retina.jpg")]
    images += [rng.integers(0, 256, (48, 40), dtype=np.uint8) for _ in range(20)]
    for img in images:
        g = _grey32(img)
        c = dctn(g, norm="ortho")[:8, :8].ravel()
        med = np.median(c[1:])
        expected = int("".join("1" if v > med else "0" for v in c), 2)
        assert _phash_bits(g) == expected
    assert _phash_bits(_grey32(np.full((40, 40), 7, np.uint8))) == 1 << 63  # flat: only the DC bit


def test_geometry_helpers():
    assert direction_letter([1, 0, 0]) == "L" and direction_letter([0, -1, 0]) == "A"
    assert direction_letter([0, 0.1, -0.9]) == "I" and direction_letter([0, 0, 0]) is None
    oh, ow, sp = output_size(100, 200, 2.0, 1.0, 512)  # anisotropic pixels become square
    assert (oh, ow) == (200, 200) and sp == [1.0, 1.0]
    oh, ow, sp = output_size(1000, 500, None, None, 512)
    assert (oh, ow, sp) == (512, 256, None)
    m = np.zeros((10, 10), np.uint8)
    m[2:4, 6:8] = 3
    r = resize_mask(m, 5, 5)
    assert set(np.unique(r)) == {0, 3} and r[1, 3] == 3


def test_reason_vocabulary_is_closed():
    with pytest.raises(ValueError):
        InputRejected("made_up_reason", "x")
    assert {"truncated", "not_dicom", "path_escapes_root", "too_many_pixels"} <= set(REASONS)


def test_overlay_outline_becomes_a_filled_region_and_annotations_are_dropped():
    from medtrinity_assets.ingest.readers.dicom_masks import closed_outline_regions
    from medtrinity_assets.ingest.readers.dicom_masks import overlay_mask as _overlay_mask

    plane = np.zeros((60, 60), bool)
    plane[10:30, 10] = plane[10:30, 29] = plane[10, 10:30] = plane[29, 10:30] = True  # closed outline
    plane[40:50, 45] = True  # an open stroke (text, arrow)
    assert closed_outline_regions(plane).sum() == 400
    boxed_letter = plane.copy()
    boxed_letter[15:25, 15] = True  # something drawn inside the box: a label, not a region
    assert closed_outline_regions(boxed_letter).sum() == 0
    # The real abdominal MR: its overlay circles one liver lesion beside text and a boxed "F".
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    mask = _overlay_mask(ds, (ds.Rows, ds.Columns), 1)[0]
    from scipy import ndimage

    _, n = ndimage.label(mask)
    assert n == 1 and 500 < mask.sum() < 2000
    assert mask[:, : ds.Columns // 3].sum() == mask.sum()  # left third of the image


def test_projection_radiograph_orientation_comes_from_patient_orientation():
    from medtrinity_assets.ingest.readers.dicom_headers import patient_orientation

    tibia = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"), stop_before_pixels=True)
    chest = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"), stop_before_pixels=True)
    assert patient_orientation(tibia) == ("R", "I")  # header: R\F
    assert patient_orientation(chest) == ("L", "I")  # header: L\F
    tibia.PatientOrientation = ["AR", "H"]
    assert patient_orientation(tibia) == ("A", "S")
    del tibia.PatientOrientation
    assert patient_orientation(tibia) is None


def test_listing_resolves_plain_files_in_their_folder_and_looks_through_links(tmp_path):
    """A listing costs one lstat per plain file (every shard lists the whole source), and still
    tells links apart: inside the root (resolved), escaping or dangling (a reason), a linked folder
    (not followed); a top folder that is itself a link is followed only when it stays inside."""
    import os

    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "secret.png").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "images" / "sub").mkdir(parents=True)
    for rel in ("images/a.png", "images/sub/c.png", "images/.hidden.png"):
        (root / rel).write_bytes(b"x")
    os.symlink(outside / "secret.png", root / "images" / "escape.png")
    os.symlink(root / "images" / "a.png", root / "images" / "inside.png")
    os.symlink(root / "images" / "gone.png", root / "images" / "dangling.png")
    os.symlink(outside / "d", root / "images" / "dirlink")
    root = root.resolve()
    found = {f.relpath: f for f in list_files(root, (), "images")}
    assert sorted(found) == ["images/a.png", "images/dangling.png", "images/escape.png", "images/inside.png",
                             "images/sub/c.png"]
    assert found["images/a.png"].path == str(root / "images" / "a.png")
    assert found["images/sub/c.png"].path == str(root / "images" / "sub" / "c.png")
    assert found["images/inside.png"].path == str(root / "images" / "a.png")
    assert found["images/escape.png"].path is None and found["images/escape.png"].reason.startswith("path_escapes_root")
    assert found["images/dangling.png"].path is None and found["images/dangling.png"].reason.startswith("unreadable")
    linked = tmp_path / "linked"
    (linked / "real").mkdir(parents=True)
    (linked / "real" / "x.png").write_bytes(b"x")
    os.symlink(linked / "real", linked / "images")  # inside the root: followed
    os.symlink(outside, linked / "out")  # outside: every file escapes
    linked = linked.resolve()
    assert [(f.relpath, f.path) for f in list_files(linked, (), "images")] == [("images/x.png", str(linked / "real" / "x.png"))]
    assert all(f.path is None for f in list_files(linked, (), "out"))
