"""Video quality metrics that run on a CPU (see docs/metrics.md).

Frames are decoded once per clip and shared by every metric; each gives a 0..1 score in
``result["scores"]`` and its raw values in ``result["raw"][name]``:

- ``motion_smoothness``: jitter of tracked corners around their Savitzky-Golay fit
- ``temporal_flicker``: luminance pumping and motion-compensated warping error
- ``visual_consistency``: histogram and motion-compensated SSIM stability, with cuts
- ``dynamic_degree``: VBench's moving-or-not rule on DIS flow (the share of moving pairs)
- ``sharpness``: variance of the Laplacian of the grey frames
- ``trajectory_adherence``: NCC tracking of each trajectory's object, TAP-Vid delta_avg
"""

from farm.metrics.clip import score_clip, score_loaded
from farm.metrics.scene import continuity, score_scene

__all__ = ["continuity", "score_clip", "score_loaded", "score_scene"]
