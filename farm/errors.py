"""The farm's one exception tree: what is retried, what falls back, what is permanent.

FarmError
├── InvalidInput          user input is wrong (scene file, CLI flag, submission, a start
│                         image no node can decode); never retried
├── ConfigError           the farm is misconfigured (settings, missing tool)
│   ├── CatalogError      the studio catalogue (FARM_CATALOG) is wrong
│   └── NoCapableNode     no live node holds what a shot needs
├── PermanentError        the job cannot succeed as asked; never retried
│   ├── WorkflowError     a workflow file or its parameter binding is wrong
│   ├── NodeRejected      the node refused the job (ComfyUI validation, node_errors)
│   └── BadNodeResponse   the node answered something the protocol does not allow
├── RetryableError        transient: the same work may succeed again, here or elsewhere
│   ├── NodeUnavailable   connection refused / reset / lost mid-job
│   └── NodeTimeout       the node did not answer or progress in time
├── FallbackError         the job may succeed with other settings, model or engine
│   ├── OutOfMemory       the node ran out of (V)RAM
│   └── ModelMissing      the node lacks a model or file the job needs
├── RenderFailed          the node ran the job and it failed at run time
├── JobCancelled          the job was cancelled or interrupted
└── InternalError         a bug in the farm; never retried (it would fail the same way)

What the fallback ladder does with each (:func:`farm.planning.next_rung`) is decided by
these classes, never by their ``kind`` strings, which are only what shot records keep:
:func:`is_final` stops a shot, :func:`wants_another_node` moves it to another node,
:class:`OutOfMemory` lightens it, any other error tries once more;
:func:`counts_against_node` says which failures count towards a node's blocklist.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class FarmError(Exception):
    """Root of every error the farm raises on purpose."""

    #: short machine-readable class of the error, stored in shot records
    kind = "error"
    #: what the node billed for the job that failed, as ``RenderResult.details`` has it
    #: (``gpu_seconds``: a cloud node's job that ran, then failed); empty otherwise
    details: Mapping[str, Any] = MappingProxyType({})


class InvalidInput(FarmError):
    """User input is invalid; ``problems`` lists each as 'path: message'."""

    kind = "invalid_input"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        return "\n".join([super().__str__(), *(f"  - {p}" for p in self.problems)])


class ConfigError(FarmError):
    """The farm is misconfigured or a required tool or service is missing."""

    kind = "config"


class CatalogError(ConfigError):
    """The studio catalogue is wrong; ``problems`` lists each as 'file: key: what; fix'."""

    kind = "catalog"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        return "\n".join([super().__str__(), *(f"  - {p}" for p in self.problems)])


class NoCapableNode(ConfigError):
    """No live node can render a job (models missing everywhere, or nodes down)."""

    kind = "no_capable_node"


class PermanentError(FarmError):
    """The job cannot succeed as asked; retrying it unchanged is pointless."""

    kind = "permanent"


class WorkflowError(PermanentError):
    """A workflow file is malformed or a parameter cannot be bound to it."""

    kind = "workflow"


class NodeRejected(PermanentError):
    """The node validated the job and refused it."""

    kind = "rejected"


class BadNodeResponse(PermanentError):
    """The node answered with something its protocol does not allow."""

    kind = "bad_response"


class RetryableError(FarmError):
    """A transient failure: the same work may succeed on a retry or another node."""

    kind = "retryable"


class NodeUnavailable(RetryableError):
    """The node cannot be reached or the connection was lost."""

    kind = "node_unavailable"


class NodeTimeout(RetryableError):
    """The node did not answer or make progress within the time allowed."""

    kind = "timeout"


class FallbackError(FarmError):
    """The job may succeed with a lighter setting, another model or another engine."""

    kind = "fallback"


class OutOfMemory(FallbackError):
    """The node ran out of GPU or host memory."""

    kind = "out_of_memory"


class ModelMissing(FallbackError):
    """The node lacks a model or input file the job needs."""

    kind = "model_missing"


class RenderFailed(FarmError):
    """The node ran the job and it failed at run time."""

    kind = "render_failed"


class JobCancelled(FarmError):
    """The job was cancelled or interrupted."""

    kind = "cancelled"


class InternalError(FarmError):
    """An unexpected exception inside the farm (a bug): recorded, never retried."""

    kind = "error"


def is_final(error: FarmError) -> bool:
    """The shot stops here: nothing another attempt could change (bad input, a job the
    node refused or answered wrongly, a cancel, a bug)."""
    return isinstance(error, InvalidInput | PermanentError | JobCancelled | InternalError)


def wants_another_node(error: FarmError) -> bool:
    """The same work may succeed on another node: this one is down, too slow, or lacks a
    model."""
    return isinstance(error, RetryableError | ModelMissing | NoCapableNode)


def counts_against_node(error: FarmError) -> bool:
    """A failure that says something about the node (towards its blocklist for the scene),
    not about the job or the user."""
    return (
        isinstance(
            error, RetryableError | FallbackError | RenderFailed | BadNodeResponse | InternalError
        )
        or type(error) is FarmError
    )
