"""MQTT v5 uplink: durable store -> broker, QoS 1, with residency and TLS checks (issue 4)."""

from agent.uplink.config import AllowedBroker, BrokerAddress, TlsConfig, UplinkConfig, parse_uplink, uplink_config
from agent.uplink.endpoint import Endpoint, EndpointRefused, PinMismatch, build_tls_context, check_endpoint
from agent.uplink.mqtt import BatchSource, Uplink
from agent.uplink.topics import data_filter, data_topic, parse_topic, status_filter, status_topic

__all__ = ["AllowedBroker", "BatchSource", "BrokerAddress", "Endpoint", "EndpointRefused", "PinMismatch",
           "TlsConfig", "Uplink", "UplinkConfig", "build_tls_context", "check_endpoint", "data_filter", "data_topic",
           "parse_topic", "parse_uplink", "status_filter", "status_topic", "uplink_config"]
