"""The MQTT ⇄ Kafka bridge: validates agent uploads into Kafka, receipts them, carries finals down."""

from bridge.app import Bridge
from bridge.settings import BridgeSettings

__all__ = ["Bridge", "BridgeSettings"]
