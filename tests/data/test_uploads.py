"""Uploads: safe zip extraction and datasets built class by class."""

import io
import zipfile

import pytest

from carnet_core import CarNetError
from carnet_core.data.uploads import UnsafeArchiveError, safe_extract_zip


def _zip(entries: dict[str, bytes], **kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=kw.get("compression", zipfile.ZIP_STORED)) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_of_class_folders_is_extracted(tmp_path):
    root = safe_extract_zip(_zip({"cars/red/a.png": b"x", "cars/blue/b.png": b"y", "__MACOSX/._a": b"z"}),
                            tmp_path / "upload")
    assert root == tmp_path / "upload" / "cars"
    assert sorted(p.name for p in root.iterdir()) == ["blue", "red"]
    assert not (tmp_path / "upload" / "__MACOSX").exists()


@pytest.mark.parametrize("entries, limits, message", [
    ({"../evil.png": b"x"}, {}, "outside"),
    ({"a/../../evil.png": b"x"}, {}, "outside"),
    ({"/etc/evil.png": b"x"}, {}, "absolute"),
    ({f"c/{i}.png": b"x" for i in range(11)}, {"max_files": 10}, "11 entries"),
    ({"c/big.png": b"x" * 5000}, {"max_bytes": 4096}, "more than"),
])
def test_unsafe_zips_are_refused(tmp_path, entries, limits, message):
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract_zip(_zip(entries), tmp_path / "upload", **limits)
    assert not (tmp_path / "upload").exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_symlinks_bombs_and_non_zips_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("c/link.png")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(buf.getvalue(), tmp_path / "a")
    bomb = _zip({"c/bomb.png": b"\0" * 20_000_000}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        safe_extract_zip(bomb, tmp_path / "b")
    with pytest.raises(CarNetError, match="not a readable zip"):
        safe_extract_zip(b"not a zip", tmp_path / "c")


@pytest.mark.shared
def test_a_dataset_is_built_class_by_class_from_photos(car_photos, tmp_path):
    """Teachable-Machine style: photos added per class are saved as they came (no re-encoding), once each, under
    names of their own; what is not a photo is refused with the reason; the result reads as a dataset."""
    from PIL import Image

    from carnet_core.data.readers import open_dataset
    from carnet_core.data.uploads import add_class_photos, check_folder_name, class_counts, remove_class

    data = tmp_path / "built"
    jpeg = car_photos[0].read_bytes()
    png = io.BytesIO()
    Image.open(car_photos[1]).save(png, "PNG")
    first = add_class_photos(data, " sports  car ", [("../../a.jpg", jpeg), ("b.jpeg", png.getvalue()),
                                                     ("notes.txt", b"not a photo"), ("cut.jpg", jpeg[:500])])
    assert first.folder == data / "sports car" and first.saved == ["../../a.jpg", "b.jpeg"]
    assert [n for n, _ in first.refused] == ["notes.txt", "cut.jpg"]
    assert "not an image" in first.refused[0][1] and first.refused[1][1].startswith("cut.jpg: cannot read")
    files = sorted((data / "sports car").iterdir())
    assert sorted(f.suffix for f in files) == [".jpg", ".png"]
    assert jpeg in [f.read_bytes() for f in files]  # as it came
    again = add_class_photos(data, "sports car", [("copy.jpg", jpeg)])
    assert again.saved == [] and again.already_there == ["copy.jpg"]
    add_class_photos(data, "pickup", [(p.name, p.read_bytes()) for p in car_photos[10:14]])
    assert class_counts(data) == {"pickup": 4, "sports car": 2}
    splits = open_dataset(data, val_fraction=0.5)
    assert set(splits.train.class_names) == {"pickup", "sports car"}
    assert len(splits.train) + len(splits.val) == 6

    for bad, message in [("", "give the class a name"), ("../x", "no / or"), (".hidden", "cannot start with"),
                         ("_uploads", "cannot start with"), ("a\x00b", "control characters"), ("x" * 81, "at most 80")]:
        with pytest.raises(CarNetError, match=message):
            check_folder_name(bad)
    remove_class(data, "pickup")
    assert class_counts(data) == {"sports car": 2}
    with pytest.raises(CarNetError, match="has no class 'pickup'"):
        remove_class(data, "pickup")
    assert class_counts(tmp_path / "nothing yet") == {}
    (tmp_path / "a file").write_text("not a folder")  # where the dataset folder should be: said, not a traceback
    with pytest.raises(CarNetError, match="cannot save photos in .*a file/pickup: Not a directory"):
        add_class_photos(tmp_path / "a file", "pickup", [("a.jpg", jpeg)])


def _patched(data: bytes, local_at: int, central_at: int, value: bytes) -> bytes:
    """``data`` with ``value`` written at an offset into the first local file header and the first central
    directory entry (a zip field that zipfile itself would not write)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        at = out.index(signature) + offset
        out[at:at + len(value)] = value
    return bytes(out)


def _encrypted() -> bytes:
    """The "encrypted" flag set (zipfile cannot encrypt; the flag is what readers go by)."""
    return _patched(_zip({"c/a.png": b"x" * 100}), 6, 8, (1).to_bytes(2, "little"))


def _bad_crc() -> bytes:
    data = bytearray(_zip({"c/a.png": b"hello world"}))
    at = data.index(b"hello world")
    data[at] = ord("j")
    return bytes(data)


@pytest.mark.parametrize("data, message", [
    (_encrypted(), "'c/a.png' is encrypted"),
    (_patched(_zip({"c/a.png": b"x" * 100}), 8, 10, (98).to_bytes(2, "little")),  # PPMd: zipfile cannot read it
     "cannot read 'c/a.png': .*compression"),
    (_bad_crc(), "cannot read 'c/a.png': the zip is damaged .*CRC"),
    (_patched(_patched(_zip({"c/a.png": b"x" * 100}), 18, 20, (10**6).to_bytes(4, "little")), 22, 24,
              (10**6).to_bytes(4, "little")),  # sizes that lie: 1 MB where there are 100 bytes
     "cannot read 'c/a.png': the zip is damaged"),
    (_zip({"c/a.png": b"x", "c/a.png/b.png": b"y"}), "'c/a.png/b.png' is both a file and a folder"),
    (_zip({"c/a.png": b"x", "c/a.png/": b""}), "'c/a.png/' is both a file and a folder"),
    (_zip({"c/" + "n" * 300 + ".png": b"x"}), "has a name longer than 255 bytes"),
])
def test_every_way_a_zip_cannot_be_read_is_a_message_naming_the_entry(tmp_path, data, message):
    """Each of these raised zipfile's or the OS's own exception (RuntimeError, NotImplementedError, BadZipFile,
    NotADirectoryError, OSError: File name too long), which the Fine-tune page showed as a traceback."""
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract_zip(data, tmp_path / "upload")
    assert not (tmp_path / "upload").exists()


def test_a_bomb_of_many_small_members_is_refused_as_a_whole(tmp_path):
    """40 members of 999,999 zero bytes (each under the per-member check's 1 MB) make a 40 MB, ~1000× zip: refused
    for the archive's ratio before anything is written (300 of them extracted 300 MB from a 477 KB zip)."""
    bomb = _zip({f"c/{i}.png": b"\0" * 999_999 for i in range(40)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 200_000
    with pytest.raises(UnsafeArchiveError, match="40 entries are compressed .*× together"):
        safe_extract_zip(bomb, tmp_path / "upload")
    assert not (tmp_path / "upload").exists()
    small = _zip({f"c/{i}.txt": b"\0" * 10_000 for i in range(40)}, compression=zipfile.ZIP_DEFLATED)
    assert safe_extract_zip(small, tmp_path / "small").is_dir()  # 400 KB of well-compressed notes: fine


def test_old_upload_extractions_are_removed_but_not_one_in_use(tmp_path):
    import os

    from carnet_core.data.catalog import UPLOADS, extract_upload, prune_uploads

    base = tmp_path / UPLOADS
    for i in range(8):
        (base / f"old{i}" / "cars").mkdir(parents=True)
        os.utime(base / f"old{i}", (1000 + i, 1000 + i))  # old0 is the least recently used
    zipped = _zip({"notes.txt": b"x"})
    removed = prune_uploads(keep=5, in_use=[base / "old1" / "cars"], root=tmp_path)
    assert sorted(p.name for p in removed) == ["old0", "old2"]  # old1 is a running fine-tune's dataset
    assert sorted(p.name for p in base.iterdir()) == ["old1", "old3", "old4", "old5", "old6", "old7"]
    with pytest.raises(CarNetError):
        extract_upload("notes.zip", zipped, root=tmp_path)  # no class folders: no dataset, not kept
    assert sorted(p.name for p in base.iterdir()) == ["old1", "old3", "old4", "old5", "old6", "old7"]
