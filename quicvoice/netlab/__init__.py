"""A network lab for root-only tests and demos: namespaces, veth links, policy routing, and a
userspace delay-and-loss line on TUN devices (this kernel has no ``tc netem``).

Shell-level infrastructure: the library never imports it. ``specs/netlab.md`` describes the
topology, the delay line's measured accuracy and how to drive a loss/delay matrix.

    from quicvoice.netlab import Lab, VoiceTopologyConfig, build_voice_topology, cleanup_stale

    cleanup_stale()
    with Lab() as lab:
        topology = build_voice_topology(lab, VoiceTopologyConfig())
        ...  # lab.spawn(topology.server, [...]), topology.client.socket(), topology.drop_wifi()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .crosstraffic import AimdStats, AimdWindow
    from .delayline import DelayLine, Fate, LineConfig, LineStats
    from .dualq import DualQ, DualQConfig, DualQStats
    from .ecnbits import Ecn, read_ecn, write_ecn
    from .lab import (
        PREFIX,
        Lab,
        Namespace,
        NetlabError,
        cleanup_stale,
        list_namespaces,
        require_root,
        run_in_namespace,
    )
    from .topology import (
        CELL_DEVICE,
        WIFI_DEVICE,
        DelayLineProcess,
        VoiceTopology,
        VoiceTopologyConfig,
        build_voice_topology,
    )
    from .udpecho import ProbeResult, probe

#: Public names and their modules, imported on first use: ``python -m
#: quicvoice.netlab.delayline`` must not find its own module already imported by the package.
_EXPORTS = {
    "AimdStats": "crosstraffic",
    "AimdWindow": "crosstraffic",
    "DualQ": "dualq",
    "DualQConfig": "dualq",
    "DualQStats": "dualq",
    "Ecn": "ecnbits",
    "read_ecn": "ecnbits",
    "write_ecn": "ecnbits",
    "DelayLine": "delayline",
    "Fate": "delayline",
    "LineConfig": "delayline",
    "LineStats": "delayline",
    "PREFIX": "lab",
    "Lab": "lab",
    "Namespace": "lab",
    "NetlabError": "lab",
    "cleanup_stale": "lab",
    "list_namespaces": "lab",
    "require_root": "lab",
    "run_in_namespace": "lab",
    "ProbeResult": "udpecho",
    "probe": "udpecho",
    "CELL_DEVICE": "topology",
    "WIFI_DEVICE": "topology",
    "DelayLineProcess": "topology",
    "VoiceTopology": "topology",
    "VoiceTopologyConfig": "topology",
    "build_voice_topology": "topology",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AimdStats",
    "AimdWindow",
    "DualQ",
    "DualQConfig",
    "DualQStats",
    "Ecn",
    "read_ecn",
    "write_ecn",
    "CELL_DEVICE",
    "PREFIX",
    "WIFI_DEVICE",
    "DelayLine",
    "DelayLineProcess",
    "Fate",
    "Lab",
    "LineConfig",
    "LineStats",
    "Namespace",
    "NetlabError",
    "ProbeResult",
    "VoiceTopology",
    "VoiceTopologyConfig",
    "build_voice_topology",
    "cleanup_stale",
    "list_namespaces",
    "probe",
    "require_root",
    "run_in_namespace",
]
