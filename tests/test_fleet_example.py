"""The fleet example (``examples/fleet/``) keeps the issuer port behind its proxy.

With ``ISSUER_PROXY_HOPS`` set, issuer reads the client address from ``X-Forwarded-For``; a
client that reached a host around the proxy would write that header itself and escape every
rate limit. So: only the proxy publishes a port, every network an issuer host joins is
internal or holds issuer hosts only, the image exposes nothing, and the hop count is the number
of proxies that write the header.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.conftest import ROOT

FLEET = ROOT / "examples" / "fleet"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((FLEET / "compose.yaml").read_text())
    return document


def issuer_hosts(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run issuer: built from the example's image."""
    return {
        name: service
        for name, service in document["services"].items()
        if service.get("image") == "issuer-fleet-example"
    }


def networks_of(service: dict[str, Any]) -> set[str]:
    # A service with no networks is on the project's "default" network.
    networks = service.get("networks", ["default"])
    return set(networks if isinstance(networks, list) else networks.keys())


def test_only_the_proxy_publishes_a_port() -> None:
    document = compose()
    published = {name for name, service in document["services"].items() if service.get("ports")}
    assert published == {"proxy"}


def test_issuer_hosts_share_networks_only_with_the_proxy_or_internally() -> None:
    document = compose()
    hosts = issuer_hosts(document)
    assert {"issuer-a", "issuer-b"} <= set(hosts)
    declared = document.get("networks") or {}
    for name, host in hosts.items():
        for network in networks_of(host):
            members = {
                other
                for other, service in document["services"].items()
                if network in networks_of(service)
            }
            internal = bool((declared.get(network) or {}).get("internal"))
            # A published service on the same non-internal network would be a way around.
            assert internal or members <= set(hosts), (name, network, members)
    # The proxy reaches the hosts on an internal network.
    proxy_networks = networks_of(document["services"]["proxy"])
    assert any(
        (declared.get(network) or {}).get("internal") and network in networks_of(host)
        for network in proxy_networks
        for host in hosts.values()
    )


def test_the_image_exposes_no_port() -> None:
    dockerfile = (FLEET / "Dockerfile").read_text()
    assert not re.search(r"^\s*EXPOSE\b", dockerfile, flags=re.MULTILINE | re.IGNORECASE)


def test_the_hop_count_is_the_one_proxy_that_writes_the_header() -> None:
    hops = compose()["x-issuer"]["environment"]["ISSUER_PROXY_HOPS"]
    assert hops == "1"
    nginx = (FLEET / "nginx.conf").read_text()
    (header,) = re.findall(r"proxy_set_header\s+X-Forwarded-For\s+(\S+);", nginx)
    # One entry, the connecting address: never the client's own list with ours appended.
    assert header == "$remote_addr"
