"""The registry of architectures: name -> how to build the network and how to describe it.

Each architecture file registers itself when imported (``register_architecture``); code that
builds or runs generators looks them up by the name stored with the weights ("srvggnet_compact",
"rrdbnet", ...). A new architecture needs only its own file (or a test's few lines): the
engine works from its ModelDescriptor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vsr.models.descriptor import ModelDescriptor

Describe = Callable[[Mapping[str, Any]], ModelDescriptor]


@dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    build: hyper-parameters (keyword arguments) -> the network (a torch module), or None for
        architectures without one (the classical resamplers).
    describe: hyper-parameters -> ModelDescriptor; must not build the network.
    """

    name: str
    build: Callable[..., Any] | None
    describe: Describe


#: name -> Architecture, in registration order
ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, build: Callable[..., Any] | None, describe: Describe,
                          replace: bool = False) -> Architecture:
    """Register an architecture under `name` (ValueError if taken, unless replace=True)."""
    if name in ARCHITECTURES and not replace:
        raise ValueError(f"architecture {name!r} is already registered")
    arch = Architecture(name, build, describe)
    ARCHITECTURES[name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """The registered architecture `name` (ValueError naming the known ones)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def describe_architecture(name: str, hparams: Mapping[str, Any]) -> ModelDescriptor:
    """The descriptor of architecture `name` with these hyper-parameters (builds nothing)."""
    return get_architecture(name).describe(hparams)


def with_defaults(build: Callable[..., Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """hparams completed with the defaults of build's keyword arguments, so that a describe
    function reads the same values the constructor would use."""
    params = inspect.signature(build).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {**defaults, **hparams}
