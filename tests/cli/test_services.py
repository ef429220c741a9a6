"""`kiln gateway` serves its application with Kiln's own HTTP protocol, as uvicorn resolves
the configuration: the limits on headers and bodies cannot be lost to uvicorn's default
(httptools or h11, which have none) by a change to how the server is set up."""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

from services.cli.services import gateway_config
from services.gateway.app import create_app
from services.gateway.protocol import LimitedHttpProtocol, RequestLimits
from tests.support.gateway_app import gateway_settings


def test_the_gateway_is_served_with_kilns_limited_protocol_and_its_settings() -> None:
    settings = gateway_settings(
        KILN_MAX_HEADER_BYTES="8192",
        KILN_MAX_HEADERS="50",
        KILN_HEADER_TIMEOUT="3",
        KILN_MAX_BODY_BYTES="4096",
        KILN_BODY_TIMEOUT="7",
    )
    config = gateway_config(settings, create_app(settings))
    config.load()  # as uvicorn.Server does before it listens

    protocol = config.http_protocol_class
    assert issubclass(protocol, LimitedHttpProtocol), protocol
    assert not issubclass(protocol, H11Protocol)
    assert protocol.limits == RequestLimits(
        max_header_bytes=8192,
        max_headers=50,
        header_timeout_s=3.0,
        max_body_bytes=4096,
        body_timeout_s=7.0,
    )
