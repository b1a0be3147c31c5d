"""The shared runtime every service stands on: the settings base, the service entry (``--config``,
``--check-config``, signals), logging, MQTT credentials, Kafka idioms and the plugin registry.

It sits between the contracts (below) and the services (above): it imports nothing but
``contracts``, and no service-specific code lives here.
"""
