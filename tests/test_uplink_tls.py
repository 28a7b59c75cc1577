"""Security and residency of the uplink (issue 4, item 2): mutual TLS against a real
Mosquitto with certificates made here, the allow-list, the plaintext rule, pinning,
and key material kept out of logs."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from agent.buffer import BatchStore
from agent.config import parse_config
from agent.uplink import EndpointRefused, Uplink, check_endpoint, uplink_config
from agent.uplink.config import AllowedBroker, BrokerAddress, TlsConfig, UplinkConfig
from agent.uplink.endpoint import is_loopback
from agent.yamlsrc import ConfigError
from simulator.receiver import Receiver, ReceiverTls
from tests.broker import TEST_CLIENT_KEY_PASSWORD
from tests.uplink_support import VEHICLE, fill_store, tls_config, wait_until

PASSWORD_ENV = "TEST_VEHICLE_KEY_PASSWORD"


@pytest.fixture
def store(tmp_path: Path):
    with BatchStore(tmp_path / "buffer.sqlite", synchronous="NORMAL") as batch_store:
        yield batch_store


@pytest.fixture
def key_password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, TEST_CLIENT_KEY_PASSWORD.decode())
    return TEST_CLIENT_KEY_PASSWORD.decode()


@pytest.fixture
def connection_attempts(monkeypatch):
    """Every outgoing TCP connection attempt (paho uses socket.create_connection)."""
    attempts: list[tuple] = []
    real = socket.create_connection

    def recording(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return attempts


def tls_receiver(broker, tmp_path: Path) -> Receiver:
    pki = broker.tls
    receiver = Receiver(broker.host, broker.port, tmp_path / "rx.sqlite", client_id="rx-tls",
                        tls=ReceiverTls(str(pki.ca), str(pki.receiver.cert), str(pki.receiver.key)))
    receiver.start()
    return receiver


def run_until_settled(uplink: Uplink, condition, timeout: float = 10.0) -> dict:
    uplink.start()
    try:
        assert wait_until(lambda: condition(uplink.state()), timeout), uplink.state()
        return uplink.state()
    finally:
        uplink.stop()


# -- configuration --------------------------------------------------------------------------------------

UPLINK_YAML = """\
vehicle: {id: truck-7}
uplink:
  region: eu-central
  broker: {host: mqtt.eu.example.net, port: 8883}
  allowed_brokers:
    - {host: mqtt.eu.example.net, port: 8883, sha256: "AB:%s"}
  tls:
    ca: certs/ca.pem
    cert: certs/vehicle.pem
    key: certs/vehicle.key
    key_password_env: VEHICLE_KEY_PASSWORD
  in_flight: 32
"""


def test_config_parses_with_defaults_and_resolves_paths(tmp_path):
    config = parse_config(UPLINK_YAML % ("cd" * 31), "agent.yaml", tmp_path)
    uplink = uplink_config(config)
    assert uplink.region == "eu-central" and uplink.broker == BrokerAddress("mqtt.eu.example.net", 8883)
    assert uplink.in_flight == 32 and uplink.keepalive == 30 and uplink.allow_plaintext_loopback is False
    assert uplink.tls.ca == str(tmp_path / "certs/ca.pem") and uplink.tls.key_password_env == "VEHICLE_KEY_PASSWORD"
    assert uplink.broker_where == "agent.yaml:4: uplink.broker"
    assert check_endpoint(uplink).pin_sha256 == "ab" + "cd" * 31
    assert uplink_config(parse_config("vehicle: {id: x}\n", "agent.yaml", tmp_path)) is None


@pytest.mark.parametrize(("text", "message"), [
    (UPLINK_YAML % "zz", "agent.yaml:6: uplink.allowed_brokers[0].sha256: must be 64 hex digits"),
    (UPLINK_YAML.replace("  in_flight: 32", "  in_flight: 0"), "agent.yaml:12: uplink.in_flight: must be an integer"),
    (UPLINK_YAML.replace("  in_flight: 32", "  inflight: 3"), "agent.yaml:12: uplink.inflight: unknown key"),
    (UPLINK_YAML.replace("    key: certs/vehicle.key\n", ""), "agent.yaml:8: uplink.tls: cert and key go together"),
    (UPLINK_YAML.replace("  region: eu-central\n", ""), "agent.yaml:3: uplink: missing required key 'region'"),
    (UPLINK_YAML.replace("port: 8883}\n  allowed", "port: x}\n  allowed"),
     "agent.yaml:4: uplink.broker.port: expected an integer"),
], ids=["pin", "in_flight", "unknown", "cert_without_key", "no_region", "port"])
def test_config_errors_name_file_line_and_key(tmp_path, text, message):
    config = parse_config(text.replace("%s", "cd" * 31), "agent.yaml", tmp_path)
    with pytest.raises(ConfigError) as error:
        uplink_config(config)
    assert str(error.value).startswith(message)


def test_loopback_means_literal_loopback_only():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("localhost.example.com") and not is_loopback("0.0.0.0")


# -- refused endpoints: before any connection attempt -------------------------------------------------

def _config(**overrides) -> UplinkConfig:
    values = {"region": "eu-central", "broker": BrokerAddress("127.0.0.1", 1883),
              "allowed_brokers": [AllowedBroker("127.0.0.1", 1883)], "allow_plaintext_loopback": True,
              "backoff_min": 0.1, "backoff_max": 0.2}
    values.update(overrides)
    return UplinkConfig(**values)


@pytest.mark.parametrize(("config", "message"), [
    (_config(allowed_brokers=[AllowedBroker("127.0.0.1", 8883)]),
     "broker 127.0.0.1:1883 is not in the allow-list for region 'eu-central' (allowed: 127.0.0.1:8883)"),
    (_config(allowed_brokers=[AllowedBroker("127.0.0.1", 1883, region="us-east")]),
     "is not in the allow-list for region 'eu-central' (allowed: none)"),
    (_config(broker=BrokerAddress("192.0.2.10", 1883), allowed_brokers=[AllowedBroker("192.0.2.10", 1883)]),
     "plaintext MQTT to non-loopback host 192.0.2.10 is not allowed"),
    (_config(allow_plaintext_loopback=False), "needs uplink.allow_plaintext_loopback: true"),
    (_config(tls=TlsConfig(ca="/nonexistent/ca.pem")), "uplink.tls.ca: cannot load CA certificates"),
], ids=["not_listed", "other_region", "plaintext_remote", "plaintext_not_allowed", "no_ca"])
def test_refused_endpoint_never_connects_and_keeps_buffering(tmp_path, store, shared_data, connection_attempts,
                                                             caplog, config, message):
    ids = fill_store(store, shared_data, limit_rows=3000)
    uplink = Uplink(config, store, VEHICLE)
    with caplog.at_level(logging.ERROR, logger="agent.uplink"):
        state = run_until_settled(uplink, lambda s: s["state"] == "refused", timeout=5)
    assert message in state["refused"] and state["connects"] == 0 and state["connect_failures"] == 0
    assert connection_attempts == [], "no socket may be opened to a refused endpoint"
    assert store.counters()["pending_batches"] == len(ids) > 0, "the data stays buffered"
    assert any(message in record.getMessage() for record in caplog.records)


# -- mutual TLS against a real broker -----------------------------------------------------------------

@pytest.mark.uplink
def test_mutual_tls_delivers_and_never_logs_key_material(mosquitto_tls, store, shared_data, tmp_path,
                                                         key_password, caplog):
    pki = mosquitto_tls.tls
    ids = fill_store(store, shared_data, limit_rows=4000)
    receiver = tls_receiver(mosquitto_tls, tmp_path)
    try:
        uplink = Uplink(tls_config(mosquitto_tls, pki, pin=pki.server.sha256), store, VEHICLE)
        with caplog.at_level(logging.DEBUG):
            uplink.start()
            try:
                assert receiver.wait_for(len(ids), timeout=20), uplink.state()
                state = uplink.state()
            finally:
                uplink.stop()
        report = receiver.report()
    finally:
        receiver.stop()
    assert state["connected"] and state["endpoint"] == f"mqtts://127.0.0.1:{mosquitto_tls.port}"
    assert report["batches"] == len(ids) and report["corrupt"] == 0
    assert "vehicle-under-test" in mosquitto_tls.log_tail(50), "the broker saw the client certificate"
    logged = caplog.text + repr(state)
    assert key_password not in logged
    assert "PRIVATE KEY" not in logged
    for secret_file in (pki.client.key,):
        body = "".join(secret_file.read_text().splitlines()[1:-1])
        assert body[:40] not in logged


def _never_connects(broker, store, shared_data, config, timeout: float = 6.0) -> dict:
    ids = fill_store(store, shared_data, limit_rows=2000)
    uplink = Uplink(config, store, VEHICLE)
    state = run_until_settled(uplink, lambda s: s["connect_failures"] >= 2 or s["state"] == "refused", timeout)
    assert not state["connected"] and state["connects"] == 0 and state["acked"] == 0
    assert store.counters()["pending_batches"] == len(ids), "nothing left the buffer"
    return state


@pytest.mark.uplink
def test_client_without_certificate_is_refused_by_the_broker(mosquitto_tls, store, shared_data):
    pki = mosquitto_tls.tls
    config = tls_config(mosquitto_tls, pki, tls=TlsConfig(ca=str(pki.ca)))
    state = _never_connects(mosquitto_tls, store, shared_data, config)
    assert state["state"] in ("backoff", "connecting") and "closed before CONNACK" in state["last_error"]
    assert "peer did not return a certificate" in mosquitto_tls.log_tail(100)


@pytest.mark.uplink
def test_client_certificate_from_another_ca_is_refused(mosquitto_tls, store, shared_data):
    pki = mosquitto_tls.tls
    stranger = TlsConfig(ca=str(pki.ca), cert=str(pki.stranger.cert), key=str(pki.stranger.key))
    state = _never_connects(mosquitto_tls, store, shared_data, tls_config(mosquitto_tls, pki, tls=stranger))
    assert "closed before CONNACK" in state["last_error"]
    assert "certificate verify failed" in mosquitto_tls.log_tail(100)


@pytest.mark.uplink
def test_broker_certificate_from_an_untrusted_ca_is_refused(mosquitto_tls, store, shared_data, key_password):
    pki = mosquitto_tls.tls
    config = tls_config(mosquitto_tls, pki)
    config = replace(config, tls=replace(config.tls, ca=str(pki.other_ca)))
    state = _never_connects(mosquitto_tls, store, shared_data, config)
    assert "certificate verify failed" in state["last_error"]
    assert "New client connected" not in mosquitto_tls.log_tail(100)


@pytest.mark.uplink
def test_pin_mismatch_is_refused_before_any_mqtt_packet(mosquitto_tls, store, shared_data, key_password):
    pki = mosquitto_tls.tls
    wrong_pin = pki.client.sha256  # a valid certificate of the same CA, but not the broker's
    state = _never_connects(mosquitto_tls, store, shared_data, tls_config(mosquitto_tls, pki, pin=wrong_pin))
    assert state["state"] == "refused"
    assert f"does not match the pinned {wrong_pin}" in state["refused"]
    assert pki.server.sha256 in state["refused"]
    assert "New client connected" not in mosquitto_tls.log_tail(100)


@pytest.mark.uplink
def test_wrong_or_missing_key_password_is_a_clear_refusal(mosquitto_tls, store, shared_data, monkeypatch,
                                                          connection_attempts):
    pki = mosquitto_tls.tls
    monkeypatch.setenv(PASSWORD_ENV, "not the password")
    state = _never_connects(mosquitto_tls, store, shared_data, tls_config(mosquitto_tls, pki))
    assert state["state"] == "refused" and f"the password in ${PASSWORD_ENV} is wrong" in state["refused"]
    assert "not the password" not in repr(state)
    monkeypatch.delenv(PASSWORD_ENV)
    uplink = Uplink(tls_config(mosquitto_tls, pki), store, VEHICLE)
    state = run_until_settled(uplink, lambda s: s["state"] == "refused", timeout=5)
    assert f"environment variable {PASSWORD_ENV} is not set" in state["refused"]
    assert connection_attempts == []


def test_check_endpoint_raises_for_direct_callers():
    with pytest.raises(EndpointRefused, match="not in the allow-list"):
        check_endpoint(_config(allowed_brokers=[]))
    endpoint = check_endpoint(_config(broker=BrokerAddress("::1", 1883), allowed_brokers=[AllowedBroker("::1", 1883)]))
    assert str(endpoint) == "mqtt://[::1]:1883" and not endpoint.tls
