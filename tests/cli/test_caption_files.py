"""caption_files.py on its own: which files a walk takes, told apart by extension or, where the
name says nothing, by content; `--media`; the kind of a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import png_bytes
from tests.support.media import video_bytes, wav_bytes
from vlm_gateway.cli import caption_files
from vlm_gateway.cli.caption_files import (
    KINDS,
    CaptionFilesError,
    Media,
    collect,
    collect_or_explain,
    kind_of_source,
    parse_kinds,
)

EVERY = frozenset(KINDS)


def folder(root: Path) -> Path:
    root.mkdir()
    (root / "a.JPG").write_bytes(b"\xff\xd8\xff cut short")  # by name: taken, broken or not
    (root / "png.dat").write_bytes(png_bytes(seed=1))
    (root / "clip.bin").write_bytes(video_bytes())
    (root / "tone").write_bytes(wav_bytes())
    (root / "fake.mp4").write_text("a text file named .mp4")
    (root / "readme.txt").write_text("left out: not media")
    (root / "noise.bin").write_bytes(bytes(range(256)) * 64)
    (root / "icon.dat").write_bytes(b"\x00\x00\x01\x00" + bytes(60))  # an .ico: not taken
    return root


def test_kinds_by_name_else_by_content(tmp_path):
    root = folder(tmp_path / "f")
    found = collect([root], EVERY)
    assert found.media == {
        str(root / "a.JPG"): Media("image", "image/jpeg"),
        str(root / "clip.bin"): Media("video", "video/mp4"),
        str(root / "fake.mp4"): Media("video", "video/mp4"),
        str(root / "png.dat"): Media("image", "image/png"),
        str(root / "tone"): Media("audio", "audio/wav"),
    }
    assert found.sources == sorted(found.media)  # in the walk's sorted order
    assert not found.left_out


def test_media_picks_the_kinds_a_walk_takes(tmp_path):
    root = folder(tmp_path / "f")
    assert collect([root], frozenset({"video"})).sources == [
        str(root / "clip.bin"),
        str(root / "fake.mp4"),
    ]
    images = collect([root])  # the default: images only, as before
    assert images.sources == [str(root / "a.JPG"), str(root / "png.dat")]
    # Only the named ones are counted: without video or audio nothing is opened with PyAV.
    assert images.left_out == {"video": 1}


def test_an_image_only_walk_never_opens_a_file_with_pyav(tmp_path, monkeypatch):
    root = folder(tmp_path / "f")
    monkeypatch.setattr(caption_files, "_sniff_container", pytest.fail)
    collect([root])


def test_known_extensions_are_never_read(tmp_path, monkeypatch):
    """A folder of tens of thousands of photos costs a stat each, not a read."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(50):
        (root / f"{i}.jpg").write_bytes(b"")
    monkeypatch.setattr(caption_files, "sniff", pytest.fail)
    assert len(collect([root], EVERY).sources) == 50


def test_named_files_and_list_files(tmp_path):
    root = folder(tmp_path / "f")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# mine\nf/clip.bin\nhttps://example.com/v.mp4\ndata:audio/wav;base64,AA\nmissing.png\n"
    )
    found = collect([root / "tone", listing, root / "fake.mp4"], frozenset({"image"}))
    assert found.sources == [
        str(root / "tone"),  # named outright: taken though --media says image
        str(root / "clip.bin"),
        "https://example.com/v.mp4",
        "data:audio/wav;base64,AA",
        str(tmp_path / "missing.png"),
        str(root / "fake.mp4"),
    ]
    assert found.media[str(root / "clip.bin")].kind == "video"
    with pytest.raises(CaptionFilesError, match="no such file or folder"):
        collect([tmp_path / "nowhere"])


def test_a_folder_named_twice_gives_each_file_once(tmp_path):
    root = folder(tmp_path / "f")
    assert collect([root, root / "clip.bin", root], EVERY).sources == collect([root], EVERY).sources


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("https://x/clip.MP4?sig=1", "video"),
        ("http://x/a.wav#t", "audio"),
        ("https://x/photo", "image"),
        ("data:video/webm;base64,AA", "video"),
        ("data:audio/mpeg;base64,AA", "audio"),
        ("data:image/png;base64,AA", "image"),
        ("/not/walked/song.flac", "audio"),
    ],
)
def test_the_kind_of_a_source_the_walk_did_not_see(source, kind):
    assert kind_of_source(source, {}) == kind


def test_parse_kinds():
    assert parse_kinds("video, AUDIO") == {"video", "audio"}
    for bad in ("", "pdf", "image,pdf", ","):
        with pytest.raises(CaptionFilesError, match="--media takes image, video, audio"):
            parse_kinds(bad)


def test_the_note_about_what_was_left_out(tmp_path):
    root = folder(tmp_path / "f")
    said: list[str] = []
    collect_or_explain([root], "video", said.append)
    assert said == [
        "caption: left out 1 audio file(s) and 2 image file(s) (--media video); "
        "--media image,video,audio takes them too"
    ]
    said.clear()
    collect_or_explain([root], "image,video,audio", said.append)
    assert said == []
