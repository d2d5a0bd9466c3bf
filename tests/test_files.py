"""Waiting for a clip another machine wrote (farm.files.visible, FARM_CLIP_WAIT)."""

from __future__ import annotations

import threading

import pytest

from farm.errors import ConfigError
from farm.files import ClipMissing, visible
from farm.settings import Settings


def test_a_clip_that_shows_up_late_is_waited_for(tmp_path):
    clip = tmp_path / "shots" / "s0" / "final.mp4"
    clip.parent.mkdir(parents=True)
    threading.Timer(0.6, clip.write_bytes, args=(b"video",)).start()
    assert visible(clip, 10) == clip and clip.read_bytes() == b"video"


def test_a_clip_that_never_shows_up_is_a_clear_error(tmp_path):
    clip = tmp_path / "final.mp4"
    with pytest.raises(ClipMissing) as caught:
        visible(clip, 0.2)
    text = str(caught.value)
    assert f"clip {clip} is not in FARM_STORAGE on this machine" in text
    assert "FARM_CLIP_WAIT" in text and "docs/deploy.md" in text


def test_the_clip_wait_may_not_be_negative():
    with pytest.raises(ConfigError, match="FARM_CLIP_WAIT"):
        Settings.from_env({"FARM_CLIP_WAIT": "-1"})
