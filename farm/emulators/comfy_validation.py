"""ComfyUI's prompt validation: :func:`validate_prompt` and the error bodies of ``POST /prompt``.

It reproduces ComfyUI 0.3.64's ``validate_prompt``: the prompt-level errors
(``invalid_prompt``, ``prompt_no_outputs``, ``prompt_outputs_failed_validation``) and the
per-node ``node_errors`` with ComfyUI's types, messages, details and ``extra_info``.
Widget values are converted in place, as ComfyUI does.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from farm.emulators.comfy_nodes import NodeDef, full_type_name, is_link


@dataclass(frozen=True)
class Validation:
    """ComfyUI's ``validate_prompt`` result: (ok, error, outputs to run, node_errors)."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _error(kind: str, message: str, details: str, extra: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def validate_prompt(
    prompt: dict[str, Any], defs: Mapping[str, NodeDef], targets: list[str] | None = None
) -> Validation:
    """Check an API graph as ComfyUI does; converts widget values in place (as ComfyUI does)."""
    outputs: list[str] = []
    for node_id in prompt:
        node = prompt[node_id]
        if "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        class_type = node["class_type"]
        d = defs.get(class_type)
        if d is None:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        if d.output_node and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {})
    good: list[str] = []
    failed: list[tuple[str, list]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, tuple[bool, list, str]] = {}
    for out in outputs:
        try:
            ok, reasons, _ = _validate_node(prompt, out, defs, validated)
        except Exception as ex:
            ok, reasons = (
                False,
                [_exception("exception_during_validation", "Exception when validating node", ex)],
            )
            validated[out] = (False, reasons, out)
        if ok:
            good.append(out)
            continue
        failed.append((out, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(
            f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons
        )
        msg = "Prompt outputs failed validation"
        return Validation(
            False, _error("prompt_outputs_failed_validation", msg, details), [], node_errors
        )
    return Validation(True, None, good, node_errors)


def _exception(kind: str, message: str, ex: BaseException, **extra: Any) -> dict[str, Any]:
    info = {
        **extra,
        "exception_type": full_type_name(type(ex)),
        "traceback": traceback.format_tb(ex.__traceback__),
    }
    return _error(kind, message, str(ex), info)


def _validate_node(
    prompt: dict, node_id: Any, defs: Mapping[str, NodeDef], validated: dict
) -> tuple:
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    d = defs[prompt[node_id]["class_type"]]
    errors: list[dict[str, Any]] = []
    valid = True
    for name, category, kind, extra in d.inputs():
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        {"input_name": name},
                    )
                )
            continue
        config = [kind, extra]
        if is_link(inputs[name]):
            ok = _validate_link(prompt, name, inputs[name], kind, config, defs, validated, errors)
            valid = valid and ok
        else:
            error = _validate_value(inputs, name, kind, extra, config, name in d.checks)
            if error:
                errors.append(error)
    for name, check in d.checks.items():
        if name in inputs and not is_link(inputs[name]):
            result = check(inputs[name])
            if result is not True:
                details = name if result is False else f"{name} - {result}"
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        details,
                        {"input_name": name},
                    )
                )
    result = (not errors and valid, errors, node_id)
    validated[node_id] = result
    return result


def _validate_link(prompt, name, link, kind, config, defs, validated, errors) -> bool:
    """Check one linked input; False if the linked node is invalid (its errors are its own)."""
    if len(link) != 2:
        msg = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
        errors.append(
            _error(
                "bad_linked_input",
                msg,
                name,
                {"input_name": name, "input_config": config, "received_value": link},
            )
        )
        return True
    source = link[0]
    received = defs[prompt[source]["class_type"]].outputs[link[1]]
    if not types_match(received, kind):
        details = f"{name}, received_type({received}) mismatch input_type({kind})"
        errors.append(
            _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                details,
                {
                    "input_name": name,
                    "input_config": config,
                    "received_type": received,
                    "linked_node": link,
                },
            )
        )
        return True
    try:
        return bool(_validate_node(prompt, source, defs, validated)[0])
    except Exception as ex:
        reason = _exception(
            "exception_during_inner_validation",
            "Exception when validating inner node",
            ex,
            input_name=name,
            input_config=config,
            exception_message=str(ex),
            linked_node=link,
        )
        validated[source] = (False, [reason], source)
        return False


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}


def _validate_value(inputs, name, kind, extra, config, custom: bool) -> dict[str, Any] | None:
    """Convert a widget value in place and check its range and choices."""
    value = inputs[name]
    if isinstance(value, dict) and "__value__" in value:
        value = inputs[name] = value["__value__"]
    if isinstance(kind, str) and kind in _CONVERT:
        try:
            value = inputs[name] = _CONVERT[kind](value)
        except Exception as ex:
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, {ex}",
                {
                    "input_name": name,
                    "input_config": config,
                    "received_value": value,
                    "exception_message": str(ex),
                },
            )
    if custom:
        return None
    info = {"input_name": name, "input_config": config, "received_value": value}
    if "min" in extra and value < extra["min"]:
        msg = "Value {} smaller than min of {}".format(value, extra["min"])
        return _error("value_smaller_than_min", msg, name, info)
    if "max" in extra and value > extra["max"]:
        msg = "Value {} bigger than max of {}".format(value, extra["max"])
        return _error("value_bigger_than_max", msg, name, info)
    if isinstance(kind, list) or kind == "COMBO":
        options = extra.get("options", []) if kind == "COMBO" else kind
        if value not in options:
            listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
            info["input_config"] = None if len(options) > 20 else config
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listing}",
                info,
            )
    return None


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's link type rule: equal, ``*`` on either side, or a shared comma-separated type."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)
