"""Credentials and TLS on a paho client, from :class:`~runtime.settings.MqttSettings`.

One place for the agent's link and the bridge's connections: user name + password (or a password
file, e.g. a mounted secret) and TLS with an optional client certificate. The server's chain is
always checked; its host name too unless ``tls_insecure``.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt

from runtime.settings import MqttSettings

log = logging.getLogger(__name__)


def apply_credentials(client: mqtt.Client, settings: MqttSettings) -> None:
    """User name/password and TLS from ``settings`` on a paho client (before it connects)."""
    password = settings.secret()
    if settings.username is not None or password is not None:
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if settings.tls_insecure:
            log.warning("mqtt.tls_insecure: the broker's host name is not checked")
            client.tls_insecure_set(True)
