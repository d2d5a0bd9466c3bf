"""The fenced transition: one Lua script applies a transition only while its record is in
a state it starts from and holds the caller's token (see :mod:`farm.lifecycle`), with
the Lua helpers for fenced writes, leases and locks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from farm.keys import Keys
from farm.lifecycle.states import TERMINAL_SCENE, TERMINAL_SHOT

if TYPE_CHECKING:
    from farm.runtime import Runtime

SCRIPT = """
local spec = cjson.decode(ARGV[1])
local now = ARGV[2]
local rec = KEYS[1]
local TERMINAL = {TERMINAL}
local cur = redis.call('HMGET', rec, 'state', spec.fence or 'binding')
local state = cur[1]
if not state then return {0, '', 'missing'} end
local allowed = false
for _, s in ipairs(spec.from) do if s == state then allowed = true end end
if not allowed then return {0, state, 'state'} end
if spec.token and (cur[2] or '') ~= spec.token then return {0, state, 'token'} end
if spec.run and redis.call('HGET', KEYS[2], 'run') ~= spec.run then return {0, state, 'run'} end
if spec.lease_free and redis.call('EXISTS', KEYS[spec.lease_free]) == 1 then
  return {0, state, 'lease'}
end
if spec.take then
  local taken = 0
  for _, t in ipairs(spec.take) do
    if taken == 0 then
      if t[1] == 'zrem' then taken = redis.call('ZREM', KEYS[t[2]], spec.member)
      else taken = redis.call('HDEL', KEYS[t[2]], spec.member) end
    end
  end
  if taken == 0 then return {0, state, 'backlog'} end
end
local target = spec.to
local set = spec.set
if spec.backlog then
  local b = spec.backlog
  if redis.call('HGET', KEYS[2], 'cancel') == '1' or redis.call('HGET', rec, 'cancel') == '1' then
    target = 'cancelled'
    set = spec.on_cancel
  else
    redis.call('HSETNX', KEYS[b[1]], b[2], b[3])
    if redis.call('HGET', KEYS[2], 'paused') == '1' then
      redis.call('HSET', KEYS[b[5]], spec.member, b[7])
    else
      redis.call('ZADD', KEYS[b[4]], b[6], spec.member)
    end
  end
end
local flat = {'state', target, 'since', now, 'updated', now}
for k, v in pairs(set) do table.insert(flat, k); table.insert(flat, v) end
redis.call('HSET', rec, unpack(flat))
for _, f in ipairs(spec.unset) do redis.call('HDEL', rec, f) end
redis.call('HINCRBY', rec, 'version', 1)
for _, f in ipairs(spec.incr) do redis.call('HINCRBY', rec, f, 1) end
for _, entry in ipairs(spec.append) do
  local log = redis.call('HGET', rec, 'attempt_log')
  if (not log) or log == '' or log == '[]' or log == 'null' then log = '[' .. entry .. ']'
  else log = string.sub(log, 1, -2) .. ',' .. entry .. ']' end
  redis.call('HSET', rec, 'attempt_log', log)
  redis.call('HINCRBY', rec, 'attempts', 1)
end
if spec.release and redis.call('HGET', KEYS[spec.release[1]], spec.member) == spec.release[2] then
  redis.call('HDEL', KEYS[spec.release[1]], spec.member)
end
if spec.occupy then redis.call('HSET', KEYS[spec.occupy[1]], spec.member, spec.occupy[2]) end
if spec.lease_set then
  redis.call('SET', KEYS[spec.lease_set[1]], spec.lease_set[2], 'PX', spec.lease_set[3])
end
if spec.lease_drop and redis.call('GET', KEYS[spec.lease_drop[1]]) == spec.lease_drop[2] then
  redis.call('DEL', KEYS[spec.lease_drop[1]])
end
if spec.active then
  if target == 'bound' or target == 'running' or target == 'scoring' then
    redis.call('ZADD', KEYS[spec.active], now, spec.member)
  else
    redis.call('ZREM', KEYS[spec.active], spec.member)
  end
  if TERMINAL[target] and not TERMINAL[state] then
    redis.call('HINCRBY', KEYS[2], 'open', -1)
    redis.call('HSET', KEYS[2], 'shots_over_at', now)
  elseif TERMINAL[state] and not TERMINAL[target] then
    redis.call('HINCRBY', KEYS[2], 'open', 1)
  end
  if spec.rendering and redis.call('HGET', KEYS[2], 'state') == 'queued' then
    redis.call('HSET', KEYS[2], 'state', 'rendering', 'since', now, 'updated', now)
    redis.call('HINCRBY', KEYS[2], 'version', 1)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', spec.maxlen, '*',
               'type', 'scene_rendering', 'time', now, 'state', 'rendering')
  end
end
if spec.scene then
  if TERMINAL[target] then
    redis.call('SREM', KEYS[spec.scene[1]], spec.scene[3])
    redis.call('ZADD', KEYS[spec.scene[2]], now, spec.scene[3])
  else
    redis.call('SADD', KEYS[spec.scene[1]], spec.scene[3])
    redis.call('ZREM', KEYS[spec.scene[2]], spec.scene[3])
  end
end
if spec.event then
  local fields = {'type', spec.event, 'time', now, 'state', target}
  for k, v in pairs(spec.data) do table.insert(fields, k); table.insert(fields, v) end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', spec.maxlen, '*', unpack(fields))
end
return {1, target, ''}
""".replace(
    "{TERMINAL}",
    "{" + ", ".join(f"{s}=true" for s in sorted({*TERMINAL_SHOT, *TERMINAL_SCENE})) + "}",
)

#: a write to a record that still holds ``token`` in ``fence`` and is in ``state``
#: (progress, preview frames), with an optional event; nothing when it moved on
GUARDED_WRITE = """
local cur = redis.call('HMGET', KEYS[1], ARGV[1], 'state')
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', ARGV[4], 'time', ARGV[5],
             'shot', ARGV[7], unpack(ARGV, 8))
end
return 1
"""

#: renew a lease held with ARGV[1] (for ARGV[2] ms); taken again when it lapsed (a Redis
#: outage) while the record (KEYS[2]) still holds the token in field ARGV[3]
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

#: take lease KEYS[1] with ARGV[1] for ARGV[2] ms while record KEYS[2] holds the token in
#: field ARGV[3]: 1 taken, 0 held by another, -1 the record moved on
HOLD = """
if redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[1] then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

#: delete a string key (a lease, a lock) only if it still holds ARGV[1]
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: delete hash field ARGV[1] (a node slot) only if it still holds ARGV[2]
RELEASE_FIELD = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

EVENTS_MAXLEN = 2000


@dataclass(frozen=True)
class Outcome:
    """What a transition did: ``applied``, and the record's state now (its new state, or
    the state that stopped it); ``why`` it was not applied: ``missing``, ``state``,
    ``token``, ``run``, ``lease`` or ``backlog`` (the shot had left the backlog)."""

    applied: bool
    state: str
    why: str = ""

    def __bool__(self) -> bool:
        return self.applied


def new_token() -> str:
    return uuid.uuid4().hex


class Scripts:
    """The module's Lua scripts registered on one Redis client (SHA cached, re-sent
    after a Redis restart)."""

    def __init__(self, client: redis.Redis) -> None:
        self.apply = client.register_script(SCRIPT)
        self.write = client.register_script(GUARDED_WRITE)
        self.renew = client.register_script(RENEW)
        self.hold = client.register_script(HOLD)
        self.release = client.register_script(RELEASE)
        self.release_field = client.register_script(RELEASE_FIELD)


_scripts: dict[int, Scripts] = {}


def scripts(client: redis.Redis) -> Scripts:
    """The scripts registered on ``client``."""
    found = _scripts.get(id(client))
    if found is None:
        if len(_scripts) > 64:
            _scripts.clear()
        found = _scripts[id(client)] = Scripts(client)
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Spec:
    """A transition being built: the keys it touches and the script's instructions."""

    def __init__(self, keys: Keys, record: str, scene_id: str) -> None:
        self.keys = [record, keys.scene(scene_id), keys.events(scene_id)]
        self.spec: dict[str, Any] = {"set": {}, "unset": [], "data": {}, "incr": [],
                                     "append": [], "maxlen": EVENTS_MAXLEN,
                                     "on_cancel": {}}  # fmt: skip

    def key(self, name: str) -> int:
        """The 1-based index of key ``name`` among the script's KEYS (added once)."""
        if name not in self.keys:
            self.keys.append(name)
        return self.keys.index(name) + 1


def _apply(
    rt: Runtime,
    table: Mapping[str, tuple[frozenset, frozenset]],
    name: str,
    spec: _Spec,
    to: str,
) -> Outcome:
    """Run transition ``name`` of ``table`` to state ``to`` as ``spec`` says."""
    start, ends = table[name]
    if to not in ends:  # a bug, never a runtime condition
        raise ValueError(f"transition {name!r} cannot end in {to!r} (it ends in {sorted(ends)})")
    spec.spec.update({"from": sorted(start), "to": to})
    reply = scripts(rt.redis).apply(
        keys=spec.keys, args=[json.dumps(spec.spec), f"{time.time():.3f}"]
    )
    return Outcome(bool(int(reply[0])), _text(reply[1]), _text(reply[2]))
