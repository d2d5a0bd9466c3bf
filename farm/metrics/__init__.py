"""Video quality metrics that run on a CPU (see docs: shared metrics reference).

Frames are decoded once per clip and shared by every metric:

- ``motion_smoothness``: jitter of tracked corners around their Savitzky-Golay fit
- ``temporal_flicker``: luminance pumping and motion-compensated warping error
- ``visual_consistency``: histogram and motion-compensated SSIM stability, with cuts
- ``trajectory_adherence``: NCC tracking of each trajectory's object, TAP-Vid delta_avg
- ``dynamic_degree`` (raw only): VBench's moving-or-not rule on DIS flow
"""

from farm.metrics.clip import score_clip, score_loaded
from farm.metrics.scene import continuity, score_scene

__all__ = ["continuity", "score_clip", "score_loaded", "score_scene"]
