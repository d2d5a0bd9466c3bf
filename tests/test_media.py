import os
import stat
from pathlib import Path

import numpy as np
import pytest

from farm import media
from farm.errors import ConfigError, InvalidInput


def frames(n: int, w: int = 320, h: int = 192, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_write_then_probe_round_trip(tmp_path):
    out = tmp_path / "sub" / "clip.mp4"
    media.write_video(out, frames(17), fps=16)
    info = media.probe(out)
    assert (info.frames, info.width, info.height) == (17, 320, 192)
    assert info.fps == pytest.approx(16)
    assert info.duration_s == pytest.approx(17 / 16)
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temp file left


def test_read_frames_decodes_bgr_frames(tmp_path):
    out = tmp_path / "grey.mp4"
    media.write_video(out, (np.full((64, 96, 3), v, np.uint8) for v in (40, 200)), fps=8)
    decoded = media.read_frames(out)
    assert [f.shape for f in decoded] == [(64, 96, 3)] * 2
    assert abs(float(decoded[0].mean()) - 40) < 3 and abs(float(decoded[1].mean()) - 200) < 3
    assert len(media.read_frames(out, max_frames=1)) == 1


@pytest.mark.parametrize("size", [(321, 192), (320, 191)])
def test_odd_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "odd.mp4", frames(2, *size), fps=16)
    assert list(tmp_path.iterdir()) == []


def test_size_change_is_refused_and_leaves_nothing(tmp_path):
    mixed = [next(frames(1)), next(frames(1, 160, 96))]
    with pytest.raises(ValueError, match="size changed"):
        media.write_video(tmp_path / "mixed.mp4", mixed, fps=16)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_existing_file_atomically(tmp_path):
    out = tmp_path / "clip.mp4"
    media.write_video(out, frames(3), fps=16)
    media.write_video(out, frames(5), fps=16)
    assert media.probe(out).frames == 5


def test_unreadable_and_missing_files_are_invalid_input(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    for path in (junk, tmp_path / "missing.mp4"):
        with pytest.raises(InvalidInput, match=path.name):
            media.probe(path)
        with pytest.raises(InvalidInput, match=path.name):
            media.read_frames(path)


def test_missing_ffmpeg_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="ffmpeg is not installed"):
        media.ffmpeg_path()


def test_slate_is_a_dark_card_with_text():
    cards = list(media.slate_frames("shot 3 failed: out of memory", 320, 192, 4))
    assert len(cards) == 4 and cards[0].shape == (192, 320, 3)
    assert float(np.median(cards[0])) < 40
    text_rows = np.flatnonzero((cards[0] > 150).any(axis=(1, 2)))
    assert len(text_rows) and abs(text_rows.mean() - 96) < 20


def test_concat_letterboxes_clips_of_different_sizes(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    media.write_video(a, frames(10, 320, 192), fps=16)
    media.write_video(b, (np.full((240, 160, 3), 255, np.uint8) for _ in range(6)), fps=16)
    media.write_video(c, media.slate_frames("failed", 640, 360, 4), fps=16)
    out = tmp_path / "scene.mp4"
    info = media.concat_videos([a, b, c], out, width=320, height=192, fps=16)
    assert (info.width, info.height, info.frames) == (320, 192, 20)
    assert info == media.probe(out)
    tall = media.read_frames(out)[12]  # from b: white, pillarboxed
    assert tall[:, 150:170].mean() > 200 and tall[:, :40].mean() < 30


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_videos_are_as_readable_as_any_new_file(tmp_path, umask):
    """A clip and a scene video get the mode of a file created normally (0666 less the
    umask), not a temporary file's 0600: others can open scene.mp4 like the clips."""
    before = os.umask(umask)
    try:
        media.write_video(tmp_path / "a.mp4", frames(4, 64, 64), fps=8)
        media.concat_videos([tmp_path / "a.mp4"], tmp_path / "scene.mp4", width=64, height=64,
                            fps=8)  # fmt: skip
    finally:
        os.umask(before)
    modes = [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.mp4", "scene.mp4")]
    assert modes == [0o666 & ~umask] * 2


def test_concat_resamples_to_the_target_fps(tmp_path):
    a = tmp_path / "a.mp4"
    media.write_video(a, frames(16, 160, 96), fps=32)
    info = media.concat_videos([a, a], tmp_path / "out.mp4", width=160, height=96, fps=16)
    assert info.fps == pytest.approx(16)
    assert abs(info.frames - 16) <= 1


def test_concat_missing_clip_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="nope.mp4"):
        media.concat_videos(
            [Path(tmp_path / "nope.mp4")], tmp_path / "o.mp4", width=64, height=64, fps=8
        )


def test_an_animation_becomes_a_clip_with_each_frame_held_for_its_duration(tmp_path):
    """ComfyUI's SaveAnimatedWEBP at 12 fps: 8 frames of one colour then 9 of another; the
    WebP encoder merges equal neighbours into two long frames, the clip has all 17 again."""
    from PIL import Image

    from farm.media import animation_to_video

    first, second = (51, 102, 204), (204, 102, 51)
    frames = [Image.new("RGB", (161, 95), first if i < 8 else second) for i in range(17)]
    webp = tmp_path / "flip.webp"
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=int(1000 / 12),
                   lossless=True)  # fmt: skip
    assert Image.open(webp).n_frames == 2  # merged by the encoder
    clip = animation_to_video(webp, tmp_path / "flip.mp4", 12.0)
    info = media.probe(clip)
    assert (info.frames, info.width, info.height, info.fps) == (17, 162, 96, 12.0)
    colours = [f.mean(axis=(0, 1))[::-1] for f in media.read_frames(clip)]
    assert np.allclose(colours[:8], [first] * 8, atol=4)
    assert np.allclose(colours[8:], [second] * 9, atol=4)


def test_a_file_that_is_no_animation_is_invalid_input(tmp_path):
    from farm.media import animation_to_video

    bad = tmp_path / "bad.webp"
    bad.write_bytes(b"not an image")
    with pytest.raises(InvalidInput, match="cannot read animation bad.webp"):
        animation_to_video(bad, tmp_path / "bad.mp4", 12.0)
