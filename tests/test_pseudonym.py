"""VIN -> HMAC-SHA256 pseudonym with a per-vehicle key file (0600)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest

from agent.privacy.pseudonym import KEY_FILE, KeyFileError, Pseudonymizer

pytestmark = pytest.mark.consent

VIN = "LFV2A21K6A4001234"


def test_key_file_is_created_private_and_reused(tmp_path):
    state = tmp_path / "state"
    first = Pseudonymizer.in_dir(state)
    key_path = state / KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    key = key_path.read_bytes()
    assert len(key) == 32 and key != bytes(32)
    again = Pseudonymizer.in_dir(state)
    assert again.vehicle_pseudonym(VIN) == first.vehicle_pseudonym(VIN)
    assert key_path.read_bytes() == key  # not replaced


def test_pseudonym_is_hmac_sha256_of_the_vin(tmp_path):
    pseudonymizer = Pseudonymizer.in_dir(tmp_path)
    key = (tmp_path / KEY_FILE).read_bytes()
    expected = hmac.new(key, b"vin\x00" + VIN.encode(), hashlib.sha256).hexdigest()
    assert pseudonymizer.vehicle_pseudonym(VIN) == expected
    assert pseudonymizer.vehicle_pseudonym(" lfv2a21k6a4001234 ") == expected  # normalised
    assert VIN not in expected and VIN.lower() not in expected
    assert len(expected) == 64


def test_pseudonym_differs_per_vehicle_key(tmp_path):
    a = Pseudonymizer.in_dir(tmp_path / "a")
    b = Pseudonymizer.in_dir(tmp_path / "b")
    assert a.vehicle_pseudonym(VIN) != b.vehicle_pseudonym(VIN)
    assert a.key_id != b.key_id
    assert a.vehicle_pseudonym(VIN) != a.vehicle_pseudonym("LFV2A21K6A4001235")


def test_value_pseudonyms_are_stable_48_bit_integers(tmp_path):
    pseudonymizer = Pseudonymizer.in_dir(tmp_path)
    values = {pseudonymizer.value_pseudonym("VI.SerialNumber", n) for n in range(2000)}
    assert len(values) == 2000  # no collisions on a small range
    assert all(0 <= v < 2**48 and float(v) == v for v in values)
    assert pseudonymizer.value_pseudonym("VI.SerialNumber", 7) == pseudonymizer.value_pseudonym("VI.SerialNumber", 7.0)
    assert pseudonymizer.value_pseudonym("VI.SerialNumber", 7) != pseudonymizer.value_pseudonym("VI.Other", 7)


def test_loose_key_file_is_refused(tmp_path):
    Pseudonymizer.in_dir(tmp_path)
    key_path = tmp_path / KEY_FILE
    os.chmod(key_path, 0o644)
    with pytest.raises(KeyFileError, match=r"accessible by other users \(mode 0644\); run: chmod 600"):
        Pseudonymizer.in_dir(tmp_path)
    os.chmod(key_path, 0o600)
    key_path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="must be 32 bytes, found 5"):
        Pseudonymizer.in_dir(tmp_path)
