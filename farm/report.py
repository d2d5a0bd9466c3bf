"""The scene report: ``report.json`` and a self-contained ``report.html`` for artists.

The page shows a contact sheet per shot, metric bars against the gate's thresholds,
trajectory plots, the gate's decisions with every take, and provenance (backend, workflow,
model, node, seed, attempts, timings). Images are embedded as ``data:`` URIs and the page
loads nothing from anywhere (its Content-Security-Policy forbids it), so it opens from a
folder, an e-mail attachment or an archive.

A pure function builds the page (:func:`render_html`); :func:`write_report` writes both
files. The images it embeds (contact strips, trajectory plots) are drawn when a take is
scored, by :mod:`farm.take_images`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from farm.catalog import model_names
from farm.files import write_text

MAX_IMAGE_BYTES = 16 * 1024 * 1024  # larger files are shown as missing, not embedded

#: metrics in the order they are shown; others follow alphabetically
METRIC_ORDER = (
    "motion_smoothness",
    "temporal_flicker",
    "visual_consistency",
    "dynamic_degree",
    "sharpness",
    "trajectory_adherence",
)
#: raw values worth a glance under each metric's bar (others are under "all raw values")
KEY_RAW = {
    "motion_smoothness": ("median_residual_px", "median_speed_px", "moving_tracks"),
    "temporal_flicker": ("pumping_index", "warping_error"),
    "visual_consistency": ("hist_to_first_min", "ssim_to_prev_min"),
    "dynamic_degree": ("dynamic", "moving_pairs", "pairs"),
    "sharpness": ("laplacian_var",),
    "trajectory_adherence": ("objmc_px", "lost_fraction", "delta_avg"),
}
#: gate decision -> (badge text, badge class); "{n}" is the number of takes
GATE_BADGES = {
    "passed": ("passed", "ok"),
    "kept_best": ("kept best of {n}", "warn"),
    "not_gated": ("not gated", "neutral"),
    "no_clip": ("no clip", "bad"),
}
STATE_CLASSES = {
    "done": "ok",
    "passed": "ok",
    "partial": "warn",
    "running": "info",
    "rendering": "info",
    "queued": "neutral",
    "waiting": "neutral",
    "paused": "neutral",
    "failed": "bad",
    "cancelled": "bad",
    "error": "bad",
}
IMAGE_MAGIC = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF8": "image/gif",
}


# ---------------------------------------------------------------------------- files


def write_report(report: dict, folder: Path) -> tuple[Path, Path]:
    """Write ``folder/report.json`` and ``folder/report.html`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    page = render_html(report, base=folder)
    paths = folder / "report.json", folder / "report.html"
    write_text(paths[0], text)
    write_text(paths[1], page)
    return paths


# ---------------------------------------------------------------------------- page


def render_html(report: dict, base: Path | None = None) -> str:
    """The report page; image paths (absolute or relative to ``base``) are embedded."""
    images = _Images(base)
    shots = [s for s in _list(report.get("shots")) if isinstance(s, dict)]
    title = str(report.get("title") or report.get("scene_id") or "Scene report")
    body = [
        _header(report, shots, base),
        "<main>",
        _shot_nav(shots),
        *(_shot(shot, i, images, base) for i, shot in enumerate(shots)),
        "" if shots else '<p class="empty">No shots in this report.</p>',
        "</main>",
        _footer(report),
    ]
    return PAGE.format(title=_e(title), css=CSS, body="\n".join(body))


class _Images:
    """Turns image paths into ``<img>`` tags with ``data:`` URIs (each file read once)."""

    def __init__(self, base: Path | None) -> None:
        self.base = base
        self.cache: dict[str, str | None] = {}

    def tag(self, ref: Any, alt: str, cls: str = "") -> str:
        if not ref:
            return ""
        key = str(ref)
        if key not in self.cache:
            self.cache[key] = self._data_uri(key)
        src = self.cache[key]
        if src is None:
            name = Path(key).name
            return f'<div class="missing {cls}" title="{_e(key)}">image missing: {_e(name)}</div>'
        cls_attr = f' class="{cls}"' if cls else ""
        return f'<img{cls_attr} src="{src}" alt="{_e(alt)}" loading="lazy">'

    def _data_uri(self, ref: str) -> str | None:
        path = Path(ref)
        if not path.is_absolute() and self.base is not None:
            path = Path(self.base) / path
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                return None
            data = path.read_bytes()
        except (OSError, ValueError):
            return None
        mime = _mime(data)
        if mime is None:
            return None
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes) -> str | None:
    for magic, mime in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _header(report: dict, shots: list[dict], base: Path | None) -> str:
    title = report.get("title") or report.get("scene_id") or "Scene report"
    facts = [
        f"scene <code>{_e(report.get('scene_id') or '?')}</code>",
        _badge(report.get("state")),
        _when(report.get("created")),
        f"{len(shots)} shot{'' if len(shots) == 1 else 's'}",
        _gate_tally(shots),
        _render_total(shots),
        f"scored in {_e(_num(report.get('seconds')))} s" if _is_num(report.get("seconds")) else "",
    ]
    video_html = _file_link(report.get("video"), base, "video") or (
        '<span class="muted">no scene video</span>'
    )
    parts = [
        '<header class="top">',
        '<div class="eyebrow">Scene report</div>',
        f"<h1>{_e(title)}</h1>",
        f'<div class="facts">{_join(facts)}</div>',
        f'<div class="facts">{video_html}</div>',
        _alert(report.get("error"), "Scoring failed"),
        _summary_chips(report.get("summary")),
        _continuity(report.get("continuity")),
        "</header>",
    ]
    return "\n".join(p for p in parts if p)


def _gate_tally(shots: list[dict]) -> str:
    counts: dict[str, int] = {}
    for shot in shots:
        decision = _gate_decision(shot.get("gate"))
        counts[decision] = counts.get(decision, 0) + 1
    labels = {"passed": "passed", "kept_best": "kept best", "no_clip": "no clip"}
    return " · ".join(f"{n} {_e(labels[d])}" for d, n in counts.items() if d in labels)


def _render_total(shots: list[dict]) -> str:
    seconds = [_dict(shot.get("provenance")).get("render_seconds") for shot in shots]
    seconds = [s for s in seconds if _is_num(s)]
    return f"render {_num(sum(seconds))} s" if seconds else ""


def _summary_chips(summary: Any) -> str:
    if not isinstance(summary, dict) or not summary:
        return ""
    chips = []
    for name in _ordered(summary):
        value = summary[name]
        fill = f'<span class="mini"><span style="width:{_pct(value)}"></span></span>'
        chips.append(
            f'<span class="chip"><span class="chip-name">{_e(_label_of(name))}</span>'
            f"<b>{_e(_score(value))}</b>{fill if _is_num(value) else ''}</span>"
        )
    return f'<div class="chips" aria-label="mean scores over shots">{"".join(chips)}</div>'


def _continuity(links: Any) -> str:
    if not isinstance(links, list) or not links:
        return ""
    items = []
    for link in links:
        if not isinstance(link, dict):
            continue
        detail = _join(
            f"{label} {_e(_num(link.get(key)))}"
            for key, label in (("hist_corr", "hist"), ("lab_shift", "Lab shift"), ("ssim", "SSIM"))
            if key in link
        )
        items.append(
            f'<li><span class="cut">{_e(link.get("from", "?"))} &rarr; {_e(link.get("to", "?"))}'
            f"</span> <b>{_e(_score(link.get('score')))}</b>"
            f' <span class="muted small">{detail}</span></li>'
        )
    return (
        f'<div class="continuity"><h2>Continuity between shots</h2><ul>{"".join(items)}</ul></div>'
    )


def _shot_nav(shots: list[dict]) -> str:
    if len(shots) < 2:
        return ""
    links = [
        f'<a href="#shot-{i}">{_e(shot.get("id", i))} {_gate_badge(shot.get("gate"))}</a>'
        for i, shot in enumerate(shots)
    ]
    return f'<nav class="shot-nav">{"".join(links)}</nav>'


def _shot(shot: dict, index: int, images: _Images, base: Path | None) -> str:
    scores, raw = _dict(shot.get("scores")), _dict(shot.get("raw"))
    thresholds = _dict(shot.get("thresholds"))
    clip = shot.get("clip")
    meta = _join(
        [
            _e(shot.get("template") or ""),
            _format_size(shot),
            _file_link(clip, base),
        ]
    )
    plot = shot.get("trajectory_plot")
    parts = [
        f'<article class="shot" id="shot-{index}">',
        '<div class="shot-head">',
        f"<h2>{_e(shot.get('id', index))}</h2>{_badge(shot.get('state'))}"
        f"{_gate_badge(shot.get('gate'))}",
        "</div>",
        f'<p class="action">{_e(shot.get("action"))}</p>' if shot.get("action") else "",
        f'<div class="facts small">{meta}</div>' if meta else "",
        _adjusted(shot.get("adjusted")),
        _alert(shot.get("error"), "Shot failed"),
        f'<figure class="strip">{images.tag(shot.get("contact"), "contact sheet")}</figure>'
        if shot.get("contact")
        else "",
        f'<div class="grid{" two" if plot else ""}">',
        f"<section><h3>Metrics</h3>{_metrics(scores, thresholds, raw, shot.get('cuts'))}</section>",
        f'<section><h3>Trajectories</h3><figure class="plot">'
        f"{images.tag(plot, 'target and tracked paths')}</figure></section>"
        if plot
        else "",
        "</div>",
        _gate(shot.get("gate"), thresholds, images),
        _provenance(shot.get("provenance")),
        "</article>",
    ]
    return "\n".join(p for p in parts if p)


def _file_link(path: Any, base: Path | None, cls: str = "") -> str:
    """A play link to a local video, by relative path; the full path on hover."""
    if not path:
        return ""
    name, cls_attr = _e(Path(str(path)).name), f' class="{cls}"' if cls else ""
    return f'<a{cls_attr} href="{_href(path, base)}" title="{_e(path)}">&#9654; {name}</a>'


def _format_size(shot: dict) -> str:
    w, h, n, fps = (shot.get(k) for k in ("width", "height", "frames", "fps"))
    bits = [f"{_e(w)}&times;{_e(h)}" if w and h else ""]
    bits.append(f"{_e(n)} frames" if n else "")
    bits.append(f"{_e(_num(fps))} fps" if _is_num(fps) else "")
    if _is_num(n) and _is_num(fps) and fps > 0:
        bits.append(f"{_num(n / fps)} s")
    return _join(bits)


def _metrics(scores: dict, thresholds: dict, raw: dict, cuts: Any) -> str:
    names = _ordered({**scores, **thresholds})
    rows = [_metric_row(n, scores.get(n), thresholds.get(n), raw.get(n)) for n in names]
    extra = [n for n in _ordered(raw) if n not in names and isinstance(raw[n], dict)]
    for name in extra:
        rows.append(
            f'<div class="raw-only"><span>{_e(_label_of(name))}</span> '
            f'<span class="muted small">{_raw_line(name, raw[name])}</span></div>'
        )
    if isinstance(cuts, list) and cuts:
        rows.append(
            f'<p class="warn-text small">Cut candidates at frame{"s" if len(cuts) > 1 else ""} '
            f"{_e(', '.join(str(c) for c in cuts))}</p>"
        )
    if not rows:
        return '<p class="muted">No scores.</p>'
    if raw:
        dump = json.dumps(raw, indent=2, default=str, sort_keys=True)
        rows.append(f"<details><summary>all raw values</summary><pre>{_e(dump)}</pre></details>")
    return f'<div class="metrics">{"".join(rows)}</div>'


def _metric_row(name: str, value: Any, threshold: Any, raw: Any) -> str:
    gated = _is_num(threshold)
    if not _is_num(value):
        verdict = "fail" if gated else "neutral"
    elif gated:
        verdict = "pass" if value >= threshold else "fail"
    else:
        verdict = "neutral"
    label = f"{_label_of(name)} {_score(value)}" + (
        f", minimum {_score(threshold)}" if gated else ""
    )
    tick = f'<span class="tick" style="left:{_pct(threshold)}"></span>' if gated else ""
    fill = f'<span class="fill" style="width:{_pct(value)}"></span>' if _is_num(value) else ""
    limit = f'<span class="limit">min {_e(_score(threshold))}</span>' if gated else ""
    note = _raw_line(name, raw) if isinstance(raw, dict) else ""
    return (
        f'<div class="metric {verdict}">'
        f'<span class="name">{_e(_label_of(name))}</span>'
        f'<span class="bar" role="img" aria-label="{_e(label)}">{fill}{tick}</span>'
        f'<span class="value">{_e(_score(value))}</span>'
        f'<span class="sub">{limit}{f"<span>{note}</span>" if note else ""}</span>'
        "</div>"
    )


def _raw_line(name: str, raw: dict) -> str:
    keys = [k for k in KEY_RAW.get(name, ()) if k in raw]
    if not keys:
        keys = [k for k, v in raw.items() if isinstance(v, int | float) and k != "note"][:3]
    bits = [f"{_e(k)} {_e(_num(raw[k]))}" for k in keys]
    if raw.get("note"):
        bits.append(f"<i>{_e(raw['note'])}</i>")
    return _join(bits)


def _gate(gate: Any, thresholds: dict, images: _Images) -> str:
    if not isinstance(gate, dict):
        return ""
    reasons = [r for r in _list(gate.get("reasons")) if r]
    reason_html = (
        f'<ul class="reasons">{"".join(f"<li>{_e(r)}</li>" for r in reasons)}</ul>'
        if reasons
        else ""
    )
    allowed = gate.get("takes_allowed")
    policy = f'<span class="muted small">up to {_e(allowed)} takes</span>' if allowed else ""
    return (
        f'<section class="gate"><h3>Gate {_gate_badge(gate)} {policy}</h3>'
        f"{reason_html}{_takes(gate, thresholds, images)}</section>"
    )


def _takes(gate: dict, thresholds: dict, images: _Images) -> str:
    takes = [t for t in _list(gate.get("takes")) if isinstance(t, dict)]
    if not takes:
        return ""
    metrics = _ordered(thresholds) or _ordered(m for t in takes for m in _list(t.get("failed")))
    head = "".join(f"<th>{_e(_label_of(m))}</th>" for m in metrics)
    kept = gate.get("kept")
    rows = [_take_row(t, i, kept, metrics, thresholds, images) for i, t in enumerate(takes)]
    return (
        '<div class="table-wrap"><table class="takes"><thead><tr><th>take</th><th>seed</th>'
        f'<th>node</th><th class="num">seconds</th>{head}<th>result</th><th>frames</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _take_row(
    take: dict, index: int, kept: Any, metrics: list[str], thresholds: dict, images: _Images
) -> str:
    number = take.get("take", index + 1)
    failed, scores = _list(take.get("failed")), _dict(take.get("scores"))
    cells = "".join(_take_cell(scores.get(m), thresholds.get(m), m in failed) for m in metrics)
    verdict = {
        True: '<span class="badge ok">pass</span>',
        False: '<span class="badge bad">fail</span>',
    }
    is_kept = kept is not None and kept == number
    head = '<tr class="kept">' if is_kept else "<tr>"
    mark = ' <span class="badge info">kept</span>' if is_kept else ""
    return (
        f"{head}<td>{_e(number)}{mark}</td><td><code>{_e(take.get('seed', ''))}</code></td>"
        f"<td>{_e(take.get('node', ''))}</td>"
        f'<td class="num">{_e(_num(take.get("seconds")))}</td>{cells}'
        f"<td>{verdict[passed] if isinstance(passed := take.get('passed'), bool) else ''}</td>"
        f"<td>{images.tag(take.get('contact'), f'take {number}', 'take-strip')}</td></tr>"
    )


def _take_cell(value: Any, threshold: Any, failed: bool) -> str:
    bad = failed or (_is_num(value) and _is_num(threshold) and value < threshold)
    return f'<td class="num{" fail-text" if bad else ""}">{_e(_score(value))}</td>'


def _models(prov: dict[str, Any]) -> str:
    """The files a render loaded; a WanGP model's second transformer file
    (``t2v_2_2:URLs2``) is counted on its model id rather than named."""
    models = [str(m) for m in prov.get("models") or ([prov["model"]] if prov.get("model") else [])]
    parts = []
    for name in model_names(models):
        files = 1 + sum(1 for m in models if m.startswith(f"{name}:"))
        extra = f" ({files} transformer files)" if files > 1 else ""
        parts.append(f"<code>{_e(name)}</code>{extra}")
    return " + ".join(parts)


def _provenance(prov: Any) -> str:
    if not isinstance(prov, dict) or not prov:
        return ""
    settings = prov.get("settings")
    rows = [
        ("backend", _e(prov.get("backend") or "")),
        ("workflow", f"<code>{_e(prov['workflow'])}</code>" if prov.get("workflow") else ""),
        ("settings", _settings(settings) if settings else ""),
        ("model", _models(prov)),
        ("node", _e(prov.get("node") or "")),
        ("seed", f"<code>{_e(prov['seed'])}</code>" if prov.get("seed") is not None else ""),
        ("cache hit", _yes_no(prov.get("cache_hit"))),
        (
            "render",
            f"{_e(_num(prov['render_seconds']))} s" if _is_num(prov.get("render_seconds")) else "",
        ),
        ("timeline", _timeline(prov)),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows if v)
    return (
        f'<section class="prov"><h3>Provenance</h3><div class="grid two">'
        f'<table class="kv">{table}</table>{_attempts(prov.get("attempts"))}</div></section>'
    )


def _settings(settings: Any) -> str:
    if not isinstance(settings, dict):
        return _e(settings)
    text = json.dumps(settings, indent=2, default=str, sort_keys=True)
    count = f"{len(settings)} setting{'' if len(settings) == 1 else 's'}"
    return f"<details><summary>{count}</summary><pre>{_e(text)}</pre></details>"


def _timeline(prov: dict) -> str:
    marks = [(k, prov.get(k)) for k in ("queued", "started", "finished")]
    shown = [f"{k} {_e(_clock(v))}" for k, v in marks if _is_num(v)]
    if not shown:
        return ""
    queued, started, finished = (v for _, v in marks)
    spans = []
    if _is_num(queued) and _is_num(started):
        spans.append(f"waited {_num(started - queued)} s")
    if _is_num(started) and _is_num(finished):
        spans.append(f"ran {_num(finished - started)} s")
    extra = f' <span class="muted small">({", ".join(spans)})</span>' if spans else ""
    return " &rarr; ".join(shown) + extra


def _attempts(attempts: Any) -> str:
    attempts = [a for a in _list(attempts) if isinstance(a, dict)]
    if not attempts:
        return ""
    rows = "".join(
        f"<tr><td>{_e(a.get('attempt', i + 1))}</td><td>{_e(a.get('kind', ''))}</td>"
        f"<td>{_e(a.get('node', ''))}</td><td>{_badge(a.get('state'))}</td>"
        f'<td class="num">{_e(_num(a.get("seconds")))}</td>'
        f'<td class="err">{_e(a.get("error") or "")}</td></tr>'
        for i, a in enumerate(attempts)
    )
    return (
        '<div class="table-wrap"><table class="attempts"><thead><tr><th>#</th><th>kind</th>'
        '<th>node</th><th>state</th><th class="num">seconds</th><th>error</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _footer(report: dict) -> str:
    version = report.get("version", "?")
    return f"<footer>farm scene report &middot; schema v{_e(version)}</footer>"


# ---------------------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _join(parts: Iterable[str], sep: str = " &middot; ") -> str:
    return sep.join(p for p in parts if p)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    """A raw value for reading: 3 significant digits, yes/no for booleans, '—' for none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not _is_num(value):
        return "—" if value is None else str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _score(value: Any) -> str:
    return f"{value:.2f}" if _is_num(value) else "—"


def _pct(value: Any) -> str:
    return f"{100 * min(1.0, max(0.0, float(value))):.1f}%" if _is_num(value) else "0%"


def _label_of(name: str) -> str:
    return str(name).replace("_", " ")


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(str(n) for n in names))
    known = [n for n in METRIC_ORDER if n in names]
    return known + sorted(n for n in names if n not in METRIC_ORDER)


def _yes_no(value: Any) -> str:
    return "" if value is None else ("yes" if value else "no")


def _badge(state: Any) -> str:
    if not state:
        return ""
    cls = STATE_CLASSES.get(str(state).lower(), "neutral")
    return f'<span class="badge {cls}">{_e(state)}</span>'


def _gate_decision(gate: Any) -> str:
    if not isinstance(gate, dict) or gate.get("enabled") is False:
        return "not_gated"
    return str(gate.get("decision") or "not_gated")


def _gate_badge(gate: Any) -> str:
    decision = _gate_decision(gate)
    takes = _list(_dict(gate).get("takes"))
    n = len(takes) or _dict(gate).get("takes_allowed") or "?"
    if decision in GATE_BADGES:
        text, cls = GATE_BADGES[decision]
        text = text.format(n=n)
    else:
        text, cls = decision.replace("_", " "), "neutral"
    return f'<span class="badge gate {cls}">{_e(text)}</span>'


def _adjusted(adjusted: Any) -> str:
    """Where the render differs from what the shot asked (frames, fps), and why."""
    items = [a for a in _list(adjusted) if isinstance(a, dict)]
    if not items:
        return ""
    lines = "".join(
        f"<li>{_e(a.get('field'))}: asked {_e(a.get('asked'))}, rendered "
        f"{_e(a.get('rendered'))} &mdash; {_e(a.get('why'))}</li>"
        for a in items
    )
    title = "<b>Rendered differently than asked</b>"
    return f'<div class="adjusted small">{title}<ul>{lines}</ul></div>'


def _alert(error: Any, title: str) -> str:
    if not error:
        return ""
    return f'<div class="alert"><b>{_e(title)}</b><pre>{_e(error)}</pre></div>'


def _when(ts: Any) -> str:
    if _is_num(ts):
        moment = datetime.fromtimestamp(ts, tz=UTC).astimezone()
        return f"<time>{_e(moment.strftime('%Y-%m-%d %H:%M %Z'))}</time>"
    return _e(ts) if ts else ""


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).astimezone().strftime("%H:%M:%S")


def _href(path: Any, base: Path | None) -> str:
    """A relative link to a local file: relative to ``base`` when given, else its name."""
    target = Path(str(path))
    if base is not None and target.is_absolute():
        try:
            rel = os.path.relpath(target, os.path.abspath(base))
        except ValueError:  # another drive on Windows
            rel = target.name
    elif base is None:
        rel = target.name
    else:
        rel = str(target)
    return _e(urllib.parse.quote(Path(rel).as_posix(), safe="/"))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<title>{title} &middot; scene report</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""

#: the colours of the report, light and dark (`farm web` uses them too)
PALETTE = """
:root {
  --bg: #15171a; --card: #1d2024; --raised: #25292e; --line: #32373d;
  --text: #e6e8eb; --muted: #9aa1a9; --accent: #7cc4ff;
  --ok: #3fb97a; --bad: #f0605a; --warn: #e8a93b; --info: #6aa9ff; --neutral: #7d8590;
  --bar: #2d3238; --fill: #8b96a3;
  color-scheme: dark;
}
@media (prefers-color-scheme: light) {
  :root {
    --bg: #f4f5f7; --card: #ffffff; --raised: #f0f2f4; --line: #dde1e6;
    --text: #1c2025; --muted: #5f6873; --accent: #1f6fd1;
    --ok: #1f9d5c; --bad: #d93b35; --warn: #b97a0c; --info: #2f6fd6; --neutral: #6b7480;
    --bar: #e4e7eb; --fill: #8792a0;
    color-scheme: light;
  }
}
"""

CSS = (
    PALETTE
    + """
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0 auto; max-width: 1180px; padding: 28px 22px 40px; color: var(--text);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
code, pre, .num, .value { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 6px 0 0; font-size: 12px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 28px; line-height: 1.2; margin: 2px 0 8px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0; }
h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted);
     margin: 18px 0 10px; font-weight: 600; display: flex; gap: 8px; align-items: center; }
.eyebrow { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .1em; }
.muted { color: var(--muted); } .small { font-size: 12px; }
.facts { color: var(--muted); margin: 4px 0; }
.facts code { color: var(--text); }
.video { font-weight: 600; }
header.top { margin-bottom: 22px; }
.chips { display: flex; flex-wrap: wrap; gap: 8px; margin: 16px 0 4px; }
.chip { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 6px 10px; display: inline-flex; flex-direction: column; min-width: 120px; }
.chip-name { color: var(--muted); font-size: 11.5px; }
.chip b { font-size: 18px; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.mini { display: block; height: 3px; background: var(--bar); border-radius: 2px; margin-top: 4px; }
.mini span { display: block; height: 100%; background: var(--accent); border-radius: 2px; }
.continuity h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em;
                 color: var(--muted); margin: 16px 0 6px; }
.continuity ul { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 6px 18px; }
.cut { font-weight: 600; }
.shot-nav { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 16px; }
.shot-nav a { background: var(--card); border: 1px solid var(--line); border-radius: 999px;
              padding: 4px 6px 4px 12px; color: var(--text); }
.shot { background: var(--card); border: 1px solid var(--line); border-radius: 14px;
        padding: 20px 22px; margin: 0 0 22px; }
.shot-head { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.action { font-size: 16px; margin: 8px 0 2px; }
.badge { display: inline-block; font-size: 11.5px; font-weight: 600; border-radius: 999px;
         padding: 1px 9px; border: 1px solid currentColor; white-space: nowrap;
         text-transform: none; letter-spacing: 0; }
.badge.ok { color: var(--ok); } .badge.bad { color: var(--bad); } .badge.warn { color: var(--warn); }
.badge.info { color: var(--info); } .badge.neutral { color: var(--neutral); }
.alert { border: 1px solid var(--bad); border-left-width: 4px; border-radius: 8px;
         padding: 8px 12px; margin: 12px 0; color: var(--text);
         background: color-mix(in srgb, var(--bad) 10%, transparent); }
.alert b { color: var(--bad); }
.adjusted { border-left: 4px solid var(--warn); padding: 4px 12px; margin: 10px 0; }
.adjusted b { color: var(--warn); } .adjusted ul { margin: 4px 0 0; padding-left: 18px; }
figure { margin: 0; }
.strip { margin: 14px 0 4px; overflow-x: auto; }
.strip img { display: block; max-width: 100%; height: auto; border-radius: 8px; }
.plot img { display: block; max-width: 100%; height: auto; border-radius: 8px; }
.missing { display: inline-flex; align-items: center; justify-content: center; min-height: 48px;
           min-width: 140px; padding: 6px 12px; border: 1px dashed var(--line); border-radius: 8px;
           color: var(--muted); font-size: 12px; }
.grid { display: grid; grid-template-columns: 1fr; gap: 8px 28px; }
@media (min-width: 860px) { .grid.two { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); } }
.metric { display: grid; grid-template-columns: 150px minmax(80px, 1fr) 46px; gap: 2px 12px;
          align-items: center; padding: 5px 0; }
.metric .name { font-weight: 500; }
.metric .bar { position: relative; height: 10px; background: var(--bar); border-radius: 5px; }
.metric .fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 5px; background: var(--fill); }
.metric.pass .fill { background: var(--ok); } .metric.fail .fill { background: var(--bad); }
.metric .tick { position: absolute; top: -4px; bottom: -4px; width: 2px; margin-left: -1px;
                background: var(--text); border-radius: 1px; }
.metric .value { text-align: right; font-weight: 600; }
.metric.fail .value, .fail-text { color: var(--bad); }
.metric .sub { grid-column: 2 / 4; color: var(--muted); font-size: 11.5px; display: flex; gap: 10px; flex-wrap: wrap; }
.limit { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.raw-only { padding: 4px 0; }
.warn-text { color: var(--warn); }
details { margin-top: 8px; color: var(--muted); font-size: 12px; }
summary { cursor: pointer; }
details pre { background: var(--raised); border-radius: 6px; padding: 8px; color: var(--text); }
.reasons { margin: 0 0 10px; padding-left: 18px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid var(--line); vertical-align: middle; }
thead th { color: var(--muted); font-weight: 600; font-size: 11.5px; }
td.num, th.num { text-align: right; }
tr.kept td { background: color-mix(in srgb, var(--info) 10%, transparent); }
.take-strip { display: block; height: 40px; width: auto; border-radius: 4px; }
.kv th { color: var(--muted); font-weight: 500; width: 110px; }
.err { color: var(--bad); max-width: 320px; word-break: break-word; }
.empty { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 30px; }
"""
)
