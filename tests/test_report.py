"""The scene report: real thumbnails and plots from synthetic clips, the page, the files."""

import base64
import json
import os
import re
import stat
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from farm.emulators.synth import ClipSpec, synthesize
from farm.report import render_html, write_report
from farm.take_images import LOST_BGR, TARGET_BGR, TRACKED_BGR, contact_strip, trajectory_plot

W, H, N, FPS = 320, 192, 17, 16.0
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}


def target_path() -> list[list[float]]:
    t = np.linspace(0, 1, N)
    return [[float(W * (0.2 + 0.6 * u)), float(H * (0.3 + 0.3 * np.sin(np.pi * u)))] for u in t]


@pytest.fixture(scope="module")
def frames():
    target = tuple((x, y) for x, y in target_path())
    return list(synthesize(ClipSpec(W, H, N, FPS, 7, "a fox runs", tracks=(target,))))


@pytest.fixture(scope="module")
def tracks():
    target = target_path()
    tracked = [[x + 3.0, y + 24.0] for x, y in target]  # visibly off the target
    return [{"target": target, "tracked": tracked, "lost": [12, 13]}]


@pytest.fixture
def report(tmp_path, frames, tracks):
    """A two-shot report: one gated shot with every image on disk, one failed shot."""
    shot_dir = tmp_path / "shots" / "a"
    shot_dir.mkdir(parents=True)
    (shot_dir / "final_t2.contact.jpg").write_bytes(contact_strip(frames))
    (shot_dir / "final.contact.jpg").write_bytes(contact_strip(frames[::-1], count=4))
    (shot_dir / "final_t2.tracks.jpg").write_bytes(trajectory_plot(frames[0], tracks))
    thresholds = {"motion_smoothness": 0.6, "temporal_flicker": 0.5, "trajectory_adherence": 0.7}
    take_scores = [
        {"motion_smoothness": 0.41, "temporal_flicker": 0.9, "trajectory_adherence": 0.8},
        {"motion_smoothness": 0.97, "temporal_flicker": 0.91, "trajectory_adherence": 0.99},
    ]
    return {
        "version": 1,
        "scene_id": "fox-dawn",
        "title": "The fox at dawn",
        "state": "partial",
        "created": 1763712000.0,
        "video": str(tmp_path / "scene.mp4"),
        "summary": {"motion_smoothness": 0.93, "temporal_flicker": 0.9, "continuity": 0.8},
        "continuity": [
            {"from": "a", "to": "b", "score": 0.8, "hist_corr": 0.9, "lab_shift": 3.1, "ssim": 0.7}
        ],
        "seconds": 3.2,
        "shots": [
            {
                "id": "a",
                "state": "done",
                "template": "standard_generation",
                "action": "a fox runs",
                "clip": str(shot_dir / "final_t2.mp4"),
                "error": None,
                "frames": N,
                "width": W,
                "height": H,
                "fps": FPS,
                "scores": {
                    "motion_smoothness": 0.97,
                    "temporal_flicker": 0.42,  # below its 0.5 minimum
                    "visual_consistency": 0.96,
                    "dynamic_degree": 0.4,
                    "sharpness": 0.95,
                    "trajectory_adherence": 0.99,
                },
                "raw": {
                    "temporal_flicker": {"pumping_index": 1.734, "warping_error": 4.2},
                    "sharpness": {"laplacian_var": 523.4},
                    "trajectory_adherence": {"objmc_px": 1.25, "lost_fraction": 0.0},
                },
                "cuts": [9],
                "thresholds": thresholds,
                "contact": str(shot_dir / "final_t2.contact.jpg"),
                "trajectory_plot": "shots/a/final_t2.tracks.jpg",  # relative to the base
                "gate": {
                    "enabled": True,
                    "decision": "passed",
                    "takes_allowed": 3,
                    "kept": 2,
                    "reasons": ["take 1: motion_smoothness 0.41 < 0.60"],
                    "takes": [
                        {
                            "take": 1,
                            "seed": 42,
                            "node": "gpu-a",
                            "seconds": 3.1,
                            "clip": str(shot_dir / "final.mp4"),
                            "contact": str(shot_dir / "final.contact.jpg"),
                            "scores": take_scores[0],
                            "passed": False,
                            "failed": ["motion_smoothness"],
                        },
                        {
                            "take": 2,
                            "seed": 1000045,
                            "node": "gpu-b",
                            "seconds": 2.9,
                            "clip": str(shot_dir / "final_t2.mp4"),
                            "contact": str(shot_dir / "final_t2.contact.jpg"),
                            "scores": take_scores[1],
                            "passed": True,
                            "failed": [],
                        },
                    ],
                },
                "provenance": {
                    "backend": "comfyui",
                    "workflow": "wan_t2v",
                    "settings": None,
                    "model": "wan2.1_t2v_1.3B_fp16.safetensors",
                    "node": "gpu-b",
                    "seed": 1000045,
                    "cache_hit": False,
                    "queued": 1763712000.0,
                    "started": 1763712001.0,
                    "finished": 1763712005.0,
                    "render_seconds": 3.1,
                    "attempts": [
                        {
                            "attempt": 1,
                            "kind": "final",
                            "node": "gpu-a",
                            "state": "failed",
                            "seconds": 1.5,
                            "model": "m",
                            "error": "CUDA out of memory",
                        },
                        {
                            "attempt": 2,
                            "kind": "final",
                            "node": "gpu-b",
                            "state": "done",
                            "seconds": 3.1,
                            "model": "m",
                            "error": None,
                        },
                    ],  # fmt: skip
                },
            },
            {
                "id": "b",
                "state": "failed",
                "action": "the fox sleeps",
                "clip": None,
                "error": "node gpu-c: model missing <wan2.2>",
                "scores": {},
                "thresholds": {},
                "contact": None,
                "trajectory_plot": None,
                "gate": {"enabled": True, "decision": "no_clip", "takes": []},
                "provenance": {"backend": "wan2gp", "settings": {"steps": 4}, "attempts": []},
            },
        ],
    }


class TagBalance(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.problems, self.seen = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def balanced(page: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    assert parser.problems == [] and parser.stack == []
    return parser


def decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def near(img: np.ndarray, bgr, tol: float = 60) -> np.ndarray:
    return np.linalg.norm(img.astype(np.float32) - np.array(bgr, np.float32), axis=2) < tol


def data_uris(page: str) -> list[tuple[str, bytes]]:
    found = re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', page)
    return [(mime, base64.b64decode(b64)) for mime, b64 in found]


def test_contact_strip_samples_the_clip_evenly(frames):
    strip = decode(contact_strip(frames, count=6, height=96))
    thumb_w = round(W * 96 / H)
    assert strip.shape[0] == 96
    assert 6 * thumb_w <= strip.shape[1] <= 6 * thumb_w + 6 * 4
    # the first and last thumbnails are the clip's first and last frames
    first = cv2.resize(frames[0], (thumb_w, 96), interpolation=cv2.INTER_AREA)
    last = cv2.resize(frames[-1], (thumb_w, 96), interpolation=cv2.INTER_AREA)
    top = slice(0, 60)  # above the frame label
    assert np.abs(strip[top, :thumb_w].astype(int) - first[top]).mean() < 8
    assert np.abs(strip[top, -thumb_w:].astype(int) - last[top]).mean() < 8


def test_contact_strip_of_a_short_clip_has_one_tile_per_frame(frames):
    strip = decode(contact_strip(frames[:2], count=6, height=48))
    assert strip.shape[0] == 48 and strip.shape[1] < 3 * round(W * 48 / H)
    with pytest.raises(ValueError):
        contact_strip([])


def test_trajectory_plot_draws_both_paths_and_lost_frames(frames, tracks):
    plain = decode(trajectory_plot(frames[0], []))
    plot = decode(trajectory_plot(frames[0], tracks, max_side=480))
    assert plot.shape[:2] == (H, W)  # already under max_side: not resized
    assert plain.mean() < frames[0].mean() * 0.7  # dimmed
    body = slice(0, H - 60)  # above the legend
    for colour in (TARGET_BGR, TRACKED_BGR, LOST_BGR):
        added = near(plot[body], colour).sum() - near(plain[body], colour).sum()
        assert added > 15, colour
    # the tracked path passes near its midpoint; the target's dashes near theirs
    x, y = (round(v) for v in tracks[0]["tracked"][N // 4])
    assert near(plot[y - 3 : y + 4, x - 3 : x + 4], TRACKED_BGR).any()
    small = decode(trajectory_plot(frames[0], tracks, max_side=160))
    assert max(small.shape[:2]) == 160


def test_trajectory_plot_tolerates_points_off_frame_and_gaps(frames):
    wild = [{"target": [[-5000, 40], [90, 90], None, [1e7, -1e7]], "tracked": [[10, 10]]}]
    decode(trajectory_plot(frames[0][:, :, 0], wild))  # grey frame, odd points


def test_page_embeds_every_image_and_loads_nothing(report, tmp_path):
    page = render_html(report, base=tmp_path)
    images = data_uris(page)
    assert len(images) == 4  # shot strip, plot, two take strips
    assert all(mime == "image/jpeg" for mime, _ in images)
    assert decode(images[0][1]).shape[0] == 96
    assert "http://" not in page and "https://" not in page
    assert 'src="/' not in page and "<script" not in page
    assert 'href="scene.mp4"' in page
    balanced(page)


def test_page_shows_bars_against_thresholds(report, tmp_path):
    page = render_html(report, base=tmp_path)
    shot_a = page.split('id="shot-0"')[1].split('id="shot-1"')[0]
    assert shot_a.count('class="bar"') == 6  # one per score
    assert shot_a.count('class="tick"') == 3  # one per threshold
    assert re.search(r'class="metric fail"><span class="name">temporal flicker', shot_a)
    assert re.search(r'class="metric pass"><span class="name">motion smoothness', shot_a)
    assert re.search(r'class="metric neutral"><span class="name">sharpness', shot_a)
    assert "pumping_index 1.73" in shot_a and "laplacian_var 523" in shot_a
    assert "objmc_px 1.25" in shot_a
    assert "Cut candidates at frame 9" in shot_a


def test_page_shows_gate_takes_and_provenance(report, tmp_path):
    page = render_html(report, base=tmp_path)
    assert '<span class="badge gate ok">passed</span>' in page
    assert "take 1: motion_smoothness 0.41 &lt; 0.60" in page
    takes = page.split('class="takes"')[1].split("</table>")[0]
    assert takes.count("<tr") == 3  # header and two takes
    assert '<tr class="kept"><td>2 <span class="badge info">kept</span>' in takes
    assert "1000045" in takes and "gpu-b" in takes and '"num fail-text">0.41' in takes
    for text in ("comfyui", "wan_t2v", "wan2.1_t2v_1.3B_fp16.safetensors", "CUDA out of memory"):
        assert text in page
    assert "waited 1 s, ran 4 s" in page
    assert '<span class="badge gate bad">no clip</span>' in page
    assert "model missing &lt;wan2.2&gt;" in page  # the failed shot's error, escaped
    assert "1 setting</summary>" in page  # the WanGP shot's settings


def test_kept_best_and_ungated_badges(report, tmp_path):
    report["shots"][0]["gate"]["decision"] = "kept_best"
    report["shots"][1]["gate"] = None
    page = render_html(report, base=tmp_path)
    assert ">kept best of 2</span>" in page and ">not gated</span>" in page


def test_user_text_is_escaped(report, tmp_path):
    evil = "<script>alert(1)</script>"
    report["title"] = evil
    report["shots"][0]["id"] = evil
    report["shots"][0]["action"] = evil
    report["shots"][0]["provenance"]["node"] = '"><img src=x onerror=alert(1)>'
    report["shots"][0]["gate"]["reasons"] = [evil]
    report["video"] = "javascript:alert(1)"
    page = render_html(report, base=tmp_path)
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript:' not in page
    balanced(page)


def test_missing_images_become_placeholders(report, tmp_path):
    shot = report["shots"][0]
    shot["contact"] = str(tmp_path / "gone.jpg")
    shot["trajectory_plot"] = str(tmp_path)  # a folder, not an image
    (tmp_path / "notes.jpg").write_text("not a jpeg")
    shot["gate"]["takes"][0]["contact"] = "notes.jpg"
    page = render_html(report, base=tmp_path)
    assert page.count('class="missing') == 3
    assert "image missing: gone.jpg" in page
    assert len(data_uris(page)) == 1  # the kept take's strip still embeds
    balanced(page)


def test_error_reports_and_bare_shots_render(tmp_path):
    page = render_html({"scene_id": "s1", "error": "scoring failed: no frames", "shots": []})
    assert "Scoring failed" in page and "scoring failed: no frames" in page
    balanced(page)
    bare = {"shots": [{"id": "x"}, {"id": "y", "scores": {"sharpness": 0.5}, "thresholds": {}}]}
    page = render_html(bare)
    assert ">not gated</span>" in page and 'class="metric neutral"' in page
    balanced(page)


def test_write_report_writes_both_files(report, tmp_path):
    out = tmp_path / "scenes" / "fox-dawn"
    report["shots"][0]["trajectory_plot"] = str(tmp_path / "shots/a/final_t2.tracks.jpg")
    json_path, html_path = write_report(report, out)
    assert (json_path, html_path) == (out / "report.json", out / "report.html")
    assert json.loads(json_path.read_text()) == report
    page = html_path.read_text()
    assert len(data_uris(page)) == 4  # absolute paths resolve wherever the report is
    assert "../../scene.mp4" in page  # the scene video, relative to the report
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp files
    balanced(page)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_report_files_are_as_readable_as_any_new_file(report, tmp_path, umask):
    """report.json and report.html get the mode of a file created normally (0666 less the
    umask: 0644 by default), like the clips beside them; not a temporary file's 0600."""
    before = os.umask(umask)
    try:
        paths = write_report(report, tmp_path / "scene")
        (tmp_path / "clip.mp4").write_bytes(b"")  # how a clip is written
    finally:
        os.umask(before)
    clip = stat.S_IMODE((tmp_path / "clip.mp4").stat().st_mode)
    assert clip == 0o666 & ~umask
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [clip, clip]


def test_a_wangp_model_s_transformer_files_are_counted_on_its_id():
    from farm.report import _models

    wangp = {"backend": "wan2gp", "models": ["t2v_2_2", "t2v_2_2:URLs2"]}
    assert _models(wangp) == "<code>t2v_2_2</code> (2 transformer files)"
    comfy = {"models": ["hi.safetensors", "lo.safetensors"]}
    assert _models(comfy) == "<code>hi.safetensors</code> + <code>lo.safetensors</code>"
    assert _models({"model": "one.safetensors"}) == "<code>one.safetensors</code>"
