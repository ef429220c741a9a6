"""The docker suite's own logic, without an engine: which Debian mirror debootstrap uses,
and what counts as a change to the host's network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docker.engine import EngineUnavailable, HostNetwork
from tests.docker.images import debian_mirror

MIRROR = "http://mirror.invalid/debian"


def test_the_mirror_comes_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\n"
        f"\nTypes: deb deb-src\nURIs: {MIRROR}\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert debian_mirror(tmp_path) == MIRROR


def test_the_mirror_comes_from_a_one_line_source(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        f"# a comment\ndeb-src {MIRROR} bookworm main\ndeb [arch=amd64] {MIRROR} bookworm main\n"
    )
    assert debian_mirror(tmp_path) == MIRROR


def test_no_mirror_for_the_suite_says_so(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(f"deb {MIRROR} trixie main\n")
    with pytest.raises(EngineUnavailable, match="no Debian bookworm mirror"):
        debian_mirror(tmp_path)


def test_a_new_link_rule_or_forwarding_is_a_change() -> None:
    rules = "# Generated\n*filter\n:INPUT ACCEPT [10:20]\nCOMMIT\n"
    before = HostNetwork(("eth0", "lo"), {"iptables-save": rules}, {"net.ipv4.ip_forward": "0"})
    counted = rules.replace("[10:20]", "[99:999]").replace("Generated", "Generated later")
    assert (
        HostNetwork(("eth0", "lo"), {"iptables-save": counted}, before.sysctls).changes_since(
            before
        )
        == []
    )
    bridge = HostNetwork(("docker0", "eth0", "lo"), before.rules, before.sysctls)
    assert "docker0" in bridge.changes_since(before)[0]
    rule = HostNetwork(
        before.links, {"iptables-save": rules + "-A FORWARD -j DOCKER\n"}, before.sysctls
    )
    assert rule.changes_since(before)
    forwarding = HostNetwork(before.links, before.rules, {"net.ipv4.ip_forward": "1"})
    assert forwarding.changes_since(before)
