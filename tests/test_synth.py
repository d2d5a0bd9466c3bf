import cv2
import numpy as np
import pytest

from farm.emulators.synth import ClipSpec, camera_moves, preview, synthesize
from farm.trajectory import track_at

W, H, N = 320, 192, 17
OFFSCREEN = ((-500.0, -500.0),)  # a track whose disk is never in frame


def spec(**kw) -> ClipSpec:
    base = {"width": W, "height": H, "frames": N, "fps": 16, "seed": 7, "prompt": "a red fox"}
    return ClipSpec(**{**base, **kw})


def render(s: ClipSpec) -> list[np.ndarray]:
    return list(synthesize(s))


def test_frames_have_the_requested_shape_and_count():
    frames = render(spec())
    assert len(frames) == N
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)


def test_same_spec_gives_the_same_clip_and_seeds_differ():
    a, b, c = render(spec()), render(spec()), render(spec(seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert np.abs(a[0].astype(int) - c[0].astype(int)).mean() > 10


def test_frames_carry_noise_and_motion():
    frames = render(spec())
    diff = np.abs(frames[1].astype(int) - frames[0].astype(int))
    assert 0.5 < np.median(diff) < 4  # sensor noise everywhere, sigma ~2
    assert (diff.sum(axis=2) > 60).sum() > 50  # the default disk moves


def test_camera_moves_are_found_in_prompts():
    prompt = "A fox. Slow zoom in, approaching subject, then the camera pans left, smooth movement"
    assert camera_moves(prompt) == ["zoom_in", "pan_left"]
    assert camera_moves("tracking shot, following subject movement") == ["tracking"]
    assert camera_moves("we DOLLY BACK, camera pulls away and tilt up") == ["dolly_back", "tilt_up"]
    assert camera_moves("a panorama of zooming birds") == []


def disk_centre(frame: np.ndarray, empty: np.ndarray) -> tuple[float, float]:
    mask = np.abs(frame.astype(int) - empty.astype(int)).sum(axis=2) > 40
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_disk_follows_the_track():
    track = ((60.0, 150.0), (160.0, 60.0), (260.0, 140.0))
    with_disk = render(spec(tracks=(track,)))
    empty = render(spec(tracks=(OFFSCREEN,)))
    for k in range(N):
        x, y = disk_centre(with_disk[k], empty[k])
        tx, ty = track_at(list(track), k, N)
        assert abs(x - tx) < 1.5 and abs(y - ty) < 1.5, k


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Global shift from a to b, below the (static) prompt banner."""
    ga, gb = (cv2.cvtColor(f[H // 4 :], cv2.COLOR_BGR2GRAY).astype(np.float32) for f in (a, b))
    window = cv2.createHanningWindow((ga.shape[1], ga.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb, window)
    return dx, dy


@pytest.mark.parametrize(
    ("prompt", "direction"),
    [
        ("camera pans right, following action", (-1, 0)),
        ("camera pans left, smooth movement", (1, 0)),
        ("camera tilts down, high angle shot", (0, -1)),
        ("a still life", (0, 0)),
    ],
)
def test_camera_moves_shift_the_background(prompt, direction):
    frames = render(spec(prompt=prompt, tracks=(OFFSCREEN,)))
    dx, dy = phase_shift(frames[4], frames[-1])
    travel = 0.2 * (N - 1 - 4) / (N - 1)  # a pan covers 20% of the frame over the clip
    assert dx == pytest.approx(direction[0] * travel * W, abs=2)
    assert dy == pytest.approx(direction[1] * travel * H, abs=2)


def test_zoom_in_magnifies_the_background():
    frames = render(spec(prompt="slow zoom in, approaching subject", tracks=(OFFSCREEN,)))
    first, last = (cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in (frames[0], frames[-1]))
    crop = first[H // 2 - 37 : H // 2 + 37, W // 2 - 62 : W // 2 + 62]
    grown = cv2.resize(crop, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_LINEAR)
    best = cv2.minMaxLoc(cv2.matchTemplate(last, grown, cv2.TM_CCOEFF_NORMED))[1]
    same = cv2.minMaxLoc(cv2.matchTemplate(last, crop, cv2.TM_CCOEFF_NORMED))[1]
    assert best > 0.8 and best > same + 0.1


def test_start_image_is_frame_zero_and_the_background():
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), (W, H))
    track = ((100.0, 100.0), (200.0, 120.0))
    frames = render(spec(start_image=image, tracks=(track,)))
    diff = np.abs(frames[0].astype(int) - image.astype(int)).sum(axis=2)
    yy, xx = np.mgrid[0:H, 0:W]
    subject = np.hypot(xx - track[0][0], yy - track[0][1]) <= min(W, H) / 10 + 3
    banner = int(((frames[0][:, :, 0] == 16).mean(axis=1) > 0.5).argmin())  # the prompt strip
    top = frames[0][:banner].astype(int)
    assert banner > 0 and np.abs(frames[1][:banner] - top).mean() < 3  # the same banner
    subject[:banner] = True
    assert diff[~subject].max() == 0  # frame 0 is the start image, but for the subject and banner
    assert diff[subject].mean() > 10  # which stands out from its surroundings
    later = frames[-1][H // 2 :, : W // 3].astype(int)  # away from the disk and banner
    assert np.abs(later - image[H // 2 :, : W // 3].astype(int)).mean() < 5


def test_a_trajectory_moves_the_start_images_subject_and_leaves_its_place():
    image = np.full((H, W, 3), (60, 140, 90), np.uint8)  # a plain backdrop ...
    start, end = (100.0, 110.0), (240.0, 120.0)
    yy, xx = np.mgrid[0:H, 0:W]
    subject = np.hypot(xx - start[0], yy - start[1]) <= 14  # ... and a checkered subject
    image[subject] = np.where((((xx // 4) + (yy // 4)) % 2 == 0)[subject, None], 240, 20)
    frames = render(spec(start_image=image, tracks=((start, end),)))

    def spot(frame, at, r=12):
        x, y = round(at[0]), round(at[1])
        return cv2.cvtColor(frame[y - r : y + r + 1, x - r : x + r + 1], cv2.COLOR_BGR2GRAY)

    assert spot(frames[0], start).std() > 60  # it starts where the picture has it
    assert spot(frames[-1], end).std() > 60  # and ends at the end of its track
    assert spot(frames[-1], start).std() < 8  # where it was, only the backdrop is left
    left = np.abs(spot(frames[-1], start).astype(int) - spot(image, (30, 110)).astype(int))
    assert left.mean() < 6


def test_start_image_of_another_shape_is_cover_cropped():
    image = np.zeros((400, 400, 3), np.uint8)
    image[:, :200] = 255
    frames = render(spec(start_image=image, frames=2))
    assert frames[0].shape == (H, W, 3)
    below = frames[0][H // 4 :]  # under the prompt banner
    assert below[:, : W // 2 - 5].min() > 200 and below[:, W // 2 + 5 :].max() < 50


def test_start_image_is_not_part_of_equality():
    image = np.zeros((H, W, 3), np.uint8)
    assert spec(start_image=image) == spec(start_image=image.copy())


def test_preview_denoises_towards_the_middle_frame():
    s = spec()
    middle = render(s)[N // 2]
    small = cv2.resize(middle, (128, 77), interpolation=cv2.INTER_AREA).astype(int)
    early, late = preview(s, 1, 20, max_side=128), preview(s, 20, 20, max_side=128)
    assert early.shape == late.shape == (77, 128, 3)
    assert np.abs(late.astype(int) - small).mean() < 2
    assert np.abs(early.astype(int) - small).mean() > 10
    assert np.array_equal(preview(s, 5, 20), preview(s, 5, 20))
