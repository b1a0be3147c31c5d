"""Operator commands: ``edgecap devices`` (identities, CA and configuration of the MQTT broker, from
the templates in ``mosquitto/``) and ``edgecap config`` (settings sent down to running agents)."""
