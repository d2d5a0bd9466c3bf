"""What ingest keeps, and how much: numbers longer than Python reads are invalid input, errors
are capped, and the submissions stream is trimmed."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis as redis_lib

from farm.ingest import DEAD_BODY_BYTES, trim_point
from farm.problems import MAX_PROBLEM_CHARS, MAX_PROBLEMS
from farm.settings import Settings
from farm.submission import (
    dead_key,
    pack_submission,
    read_submission,
    send_submission,
    status_key,
    stream_key,
)

from .test_e2e import wait_done
from .test_ingest import decided, entry, farm_cli, new_id, quick_scene

BIG_NUMBER_ERROR = (
    "$: the body has a number of more than 4,300 digits, the most this farm reads; "
    "use numbers of at most 4,300 digits"
)


def big_number_body(sid: str) -> str:
    """A body whose seed has 5,000 digits (JSON allows it; Python reads at most 4,300)."""
    shot = f'{{"id": "s", "action_description": "a", "seed": {"9" * 5000}}}'
    return f'{{"version": 1, "submission": "{sid}", "scene": {{"id": "big", "shots": [{shot}]}}}}'


def test_a_number_longer_than_python_reads_is_one_clear_problem():
    sub = read_submission({"submission": "n-1", "body": big_number_body("n-1")},
                          Settings.from_env({}))  # fmt: skip
    assert sub.id == "n-1" and sub.problems == [BIG_NUMBER_ERROR]


def test_the_trim_point_keeps_what_any_group_has_pending_or_not_read():
    assert trim_point([]) is None
    assert trim_point([(b"5-3", None)]) == "5-4"  # everything up to 5-3 acknowledged
    assert trim_point([("5-3", "2-7")]) == "2-7"  # 2-7 is pending
    assert trim_point([("5-3", None), ("1-0", None)]) == "1-1"  # a group that read less
    assert trim_point([("0-0", None)]) == "0-1"  # a group that read nothing: keep all


# -- on the session farm (a real redis-server and `farm ingest`) ---------------------------


@pytest.fixture
def settings(farm_cluster) -> Settings:
    return farm_cluster.settings()


@pytest.fixture
def r(farm_cluster):
    client = redis_lib.Redis.from_url(farm_cluster.env()["FARM_REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def node_bytes(r) -> int:
    """stream-node-max-bytes: an entry bigger than this is a stream node of its own, so
    XTRIM/XADD with ``~`` (which delete whole nodes) delete exactly such entries."""
    return int(r.config_get("stream-node-max-bytes")["stream-node-max-bytes"])


def padded(sid: str, scene: dict, pad: int) -> dict[str, str]:
    """An entry made bigger than ``pad`` bytes by its (valid) client field."""
    client = {f"pad{i}": "p" * 1000 for i in range(pad // 1000 + 1)}
    return entry(sid, scene, client=client)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)
    return result


def older_than(r, stream: str, entry_id: str) -> list:
    return r.xrange(stream, "-", f"({entry_id}")


def test_a_5000_digit_number_is_rejected_as_invalid(r, settings):
    sid = new_id("big-number")
    r.xadd(stream_key(settings), {"submission": sid, "body": big_number_body(sid)})
    status = decided(r, settings, sid)
    assert (status["state"], status["reason"], status["errors"]) == (
        "rejected", "invalid", [BIG_NUMBER_ERROR]
    )  # fmt: skip


def test_ingest_trims_what_every_group_acknowledged_and_nothing_else(rt, r, settings):
    """Each entry is bigger than a stream node, so the trim is exact. A second group,
    ``audit``, holds back what it has not read and, later, what it has pending; once it
    has acknowledged everything, ingest trims every decided entry."""
    stream, pad = stream_key(settings), node_bytes(r)
    before = new_id("before")
    r.xadd(stream, padded(before, quick_scene(new_id("scene")) | {"quality": "best"}, pad))
    decided(r, settings, before)
    r.xgroup_create(stream, "audit", id="$")
    try:
        sent = [(new_id("ok"), quick_scene(new_id("scene"))) for _ in range(2)]
        sent += [(new_id("bad"), quick_scene(new_id("scene")) | {"quality": "best"})
                 for _ in range(10)]  # fmt: skip
        ids = [r.xadd(stream, padded(sid, scene, pad)) for sid, scene in sent]
        states = [decided(r, settings, sid)["state"] for sid, _ in sent]
        assert states == ["accepted"] * 2 + ["rejected"] * 10
        # audit has read none of them: all stay; what both groups acknowledged goes
        wait_for(lambda: not older_than(r, stream, ids[0]), 10, "the entries before trimmed")
        assert [e[0] for e in r.xrange(stream, ids[0], ids[-1])] == ids
        # audit reads them all and leaves the 6th pending: it and every later one stay
        read = r.xreadgroup("audit", "auditor", {stream: ">"}, count=100)[0][1]
        assert [e[0] for e in read] == ids
        r.xack(stream, "audit", *ids[:5], *ids[6:])
        wait_for(lambda: not older_than(r, stream, ids[5]), 10, "the acknowledged trimmed")
        assert [e[0] for e in r.xrange(stream, ids[0], ids[-1])] == ids[5:]
        r.xack(stream, "audit", ids[5])
        wait_for(lambda: not r.xrange(stream, "-", ids[-1]), 10, "everything trimmed")
    finally:
        r.xgroup_destroy(stream, "audit")
    for _, scene in sent[:2]:
        assert wait_done(rt, scene["id"])["state"] == "done"


def junk_entries(settings: Settings) -> dict[str, tuple[str, dict[str, str]]]:
    """120 bad submissions, by kind: bodies over FARM_SUBMISSION_MAX_BYTES (2 MiB in the
    session farm) and, in bodies under it, fields of 1-2 MB that an error would echo, a
    scene with 10,000 problems and a 5,000-digit number. Kind → (the text each error must
    hold, the entries by submission id)."""
    limit, mb = settings.submission_max_bytes, 1024 * 1024
    near = limit - 64 * 1024

    def body(sid: str, **fields) -> dict[str, str]:
        return {"submission": sid, "body": json.dumps({"version": 1, "submission": sid, **fields})}

    def scene(**extra) -> dict:
        return quick_scene(new_id("scene")) | extra

    bogus = {"id": "x", "shots": [{"id": f"s{i}", "action_description": "a", "bogus": 1}
                                  for i in range(10_000)]}  # fmt: skip
    kinds = {
        "over": (20, f"over the limit of {limit} (FARM_SUBMISSION_MAX_BYTES)",
                 lambda sid: {"submission": sid, "body": "x" * (limit + 1)}),
        "title": (20, f"(a string of {near:,} characters) is over the limit of 200 characters",
                  lambda sid: body(sid, scene=scene(title="t" * near))),
        "field": (10, f"(a string of {mb:,} characters); allowed: version",
                  lambda sid: body(sid, scene=scene(), **{"k" * mb: 1})),
        "file": (10, f"(a string of {mb + 4:,} characters) is not a bare image file name",
                 lambda sid: body(sid, scene=scene(), files={"n" * mb + ".png": "aGk="})),
        "start": (10, f"(a string of {mb + 4:,} characters) is not attached",
                  lambda sid: body(sid, scene=quick_scene(new_id("scene"),
                                                          start_image="s" * mb + ".png"))),
        "version": (10, f"(a string of {mb:,} characters) is not supported",
                    lambda sid: body(sid, version="v" * mb, scene=scene())),
        "client": (10, "must be a string of at most 1000 characters, not 'ccc",
                   lambda sid: body(sid, scene=scene(), client={"app": "c" * mb})),
        "shots": (10, "… and 9,950 more problems", lambda sid: body(sid, scene=bogus)),
        "number": (10, BIG_NUMBER_ERROR,
                   lambda sid: {"submission": sid, "body": big_number_body(sid)}),
        "no-id": (10, "$.submission: the entry's submission field 'iii",
                  lambda sid: {"submission": "i" * mb, "body": "{}"}),
    }  # fmt: skip
    out = {}
    for kind, (count, expect, make) in kinds.items():
        sids = [new_id(kind) for _ in range(count)]
        out[kind] = (expect, {sid: make(sid) for sid in sids})
    return out


def test_bad_submissions_leave_a_bounded_amount_in_redis(r, settings):
    """120 bad submissions of 1-2 MB each (about 150 MB sent): what stays in Redis (their
    statuses, the dead-letter stream, the submissions stream) is bounded by the caps, and
    every stored error is short and names the limit. Before the caps, each error echoed its
    whole value into the status and the dead letter, with 1 MiB of body kept besides."""
    stream, dead = stream_key(settings), dead_key(settings)
    used_before = r.info("memory")["used_memory"]
    kinds = junk_entries(settings)
    messages = {}
    for _, entries in kinds.values():
        pipe = r.pipeline(transaction=False)
        for fields in entries.values():
            pipe.xadd(stream, fields)
        messages.update(zip(entries, pipe.execute(), strict=True))
    for kind, (expect, entries) in kinds.items():
        for sid in entries:
            if kind == "no-id":  # no status to write: only a dead letter
                continue
            status = decided(r, settings, sid, 60)
            assert (status["state"], status["reason"]) == ("rejected", "invalid"), (kind, status)
            errors = status["errors"]
            assert any(expect in e for e in errors), (kind, errors)
            assert len(errors) <= MAX_PROBLEMS + 1, kind
            assert all(len(e) <= MAX_PROBLEM_CHARS for e in errors), kind
    last = max(messages.values(), key=lambda m: tuple(map(int, m.split("-"))))
    wait_for(lambda: not r.xpending_range(stream, "ingest", "-", last, count=1), 30,
             "every message decided")  # fmt: skip
    wait_for(lambda: not r.xrange(stream, "-", last, count=1), 10, "the stream trimmed")

    with redis_lib.Redis.from_url(settings.redis_url) as raw:  # bytes: a body may be binary
        newest = raw.xrevrange(dead, count=300)
    letters = {f[b"message"].decode(): {k.decode(): v for k, v in f.items()} for _, f in newest}
    ours = [letters[m] for m in messages.values()]
    errors_bound = (MAX_PROBLEMS + 1) * (MAX_PROBLEM_CHARS + 8)  # JSON: quotes, \u2026
    assert all(len(f["body"]) <= DEAD_BODY_BYTES for f in ours)
    assert all(len(f["errors"]) <= errors_bound for f in ours)
    assert sum(f["reason"] == b"invalid" for f in ours) == 120
    no_id = [letters[messages[sid]] for sid in kinds["no-id"][1]]
    assert all(kinds["no-id"][0] in f["errors"].decode() for f in no_id)
    assert all(int(f["body_bytes"]) == 2 for f in no_id)

    sids = [sid for kind, (_, entries) in kinds.items() if kind != "no-id" for sid in entries]
    status_bytes = sum(r.memory_usage(status_key(settings, sid), samples=0) for sid in sids)
    dead_bytes = r.memory_usage(dead, samples=0)
    stream_bytes = r.memory_usage(stream, samples=0)
    slack = 1.25  # the allocator's size classes
    status_bound = len(sids) * (errors_bound + 2048) * slack
    dead_bound = r.xlen(dead) * (DEAD_BODY_BYTES + errors_bound + 1024) * slack
    stream_bound = 64 * 1024  # trimmed: at most one stream node of decided entries
    used_after = r.info("memory")["used_memory"]
    print(f"\nsent {sum(len(f['body']) + len(f['submission']) for e in kinds.values() for f in e[1].values()) / 2**20:.1f} MiB;"
          f" statuses {status_bytes / 2**10:.0f} KiB (bound {status_bound / 2**10:.0f}),"
          f" dead letters {dead_bytes / 2**20:.2f} MiB for {r.xlen(dead)} (bound {dead_bound / 2**20:.1f}),"
          f" stream {stream_bytes / 2**10:.1f} KiB; used_memory {used_before / 2**20:.1f} → {used_after / 2**20:.1f} MiB")  # fmt: skip
    assert status_bytes <= status_bound
    assert dead_bytes <= dead_bound
    assert stream_bytes <= stream_bound
    assert used_after - used_before <= status_bound + dead_bound + stream_bound + 8 * 2**20


def test_senders_cap_the_stream_with_maxlen(cli_env, scratch_settings, r, tmp_path):
    """On a prefix no ingest reads, send_submission and `farm submit` add with
    MAXLEN ~ FARM_SUBMISSIONS_MAXLEN: the oldest entries go. Each entry is bigger than a
    stream node, so ~ is exact; small entries share nodes and may exceed it by one node."""
    settings = dataclasses.replace(scratch_settings, submissions_maxlen=5)
    stream, pad = stream_key(settings), node_bytes(r)
    lengths, ids = [], []
    for i in range(12):
        fields = {"submission": f"big-{i}", "body": json.dumps({"pad": "p" * pad})}
        ids.append(send_submission(r, settings, fields))
        lengths.append(r.xlen(stream))
    assert lengths == [1, 2, 3, 4, 5] + [5] * 7
    assert [e[0] for e in r.xrange(stream)] == ids[-5:]
    per_node = int(r.config_get("stream-node-max-entries")["stream-node-max-entries"])
    for i in range(3 * per_node):
        send_submission(r, settings, {"submission": f"small-{i}", "body": "{}"})
        assert 5 <= r.xlen(stream) <= 5 + per_node
    # farm submit, the same way (exit 3: nobody decides)
    env = {**cli_env, "FARM_PREFIX": settings.key_prefix + "-cli", "FARM_SUBMISSIONS_MAXLEN": "2"}
    path = tmp_path / "scene.json"
    scene = quick_scene(new_id("scene"), 3, action_description="a" * 2000)  # valid
    path.write_text(json.dumps(scene))
    assert len(pack_submission(path)["body"]) > pad
    for i in range(4):
        out = farm_cli("submit", str(path), "--id", f"cli-{i}", "--timeout", "0", env=env)
        assert out.returncode == 3, out.stderr
    cli_stream = f"{env['FARM_PREFIX']}:submissions"
    assert [f["submission"] for _, f in r.xrange(cli_stream)] == ["cli-2", "cli-3"]
