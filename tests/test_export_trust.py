"""Whose key signed an export (issue 11): a valid signature is not enough, the key must be one the owner got
from the vehicle out of band; and hostile exports fail with a named reason, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.export.signing import KEY_FILE, display_fingerprint, load_or_create_key, parse_fingerprint, public_pem
from agent.export.trust import add_trusted, default_trust_file, read_trust_file
from agent.export.verify import EXIT_DAMAGED, EXIT_OK, EXIT_UNTRUSTED, verify_export
from agent.export.writer import ExportContent, write_export
from agent.ledger import Ledger

pytestmark = pytest.mark.incident

DEEP = b"[" * 100_000 + b"]" * 100_000


def make_export(out, key, vehicle="truck-1"):
    content = ExportContent(kind="range", start=1.0, end=2.0, frames=[], samples=[], dbc_paths=[],
                            consent_history=[{"version": 1}], ledger_entries=[{"seq": 1}], vehicle_id=vehicle)
    write_export(content, out, key)
    return out


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The owner's config directory, away from the real one."""
    config = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


@pytest.fixture
def vehicle(tmp_path, home):
    state = tmp_path / "state"
    key = load_or_create_key(state)
    return {"state": state, "key": key, "fingerprint": display_fingerprint(key),
            "export": make_export(tmp_path / "export", key)}


def copy_of(vehicle, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(vehicle["export"], target)
    return target


def test_a_valid_signature_by_a_key_nobody_vouched_for_is_not_trusted(vehicle, capsys):
    result = verify_export(vehicle["export"], trusted=[])
    assert result.ok and result.signature_ok and result.trusted is False and result.exit_code == EXIT_UNTRUSTED
    assert main(["export", "verify", str(vehicle["export"])]) == EXIT_UNTRUSTED  # before: 0, "OK"
    err = capsys.readouterr().err
    assert "signature valid, key NOT TRUSTED" in err and vehicle["fingerprint"] in err
    assert "vehicle-agent identity" in err


@pytest.mark.parametrize("how", ["fingerprint", "bare-hex", "key", "trust-file", "default-trust-file"])
def test_the_vehicle_key_given_out_of_band_is_trusted(vehicle, tmp_path, capsys, how):
    fpr = vehicle["fingerprint"]
    if how == "fingerprint":
        extra = ["--fingerprint", fpr]
    elif how == "bare-hex":
        extra = ["--fingerprint", fpr.removeprefix("SHA256:").upper()]
    elif how == "key":
        pem = tmp_path / "vehicle.pem"
        pem.write_bytes(public_pem(vehicle["key"]))
        extra = ["--key", str(pem)]
    elif how == "trust-file":
        trust = tmp_path / "owner-trust"
        assert main(["export", "trust", fpr, "--name", "my truck", "--trust-file", str(trust)]) == 0
        assert f"added to {trust}" in capsys.readouterr().out
        extra = ["--trust-file", str(trust)]
    else:
        assert main(["export", "trust", fpr]) == 0
        assert f"added to {default_trust_file()}" in capsys.readouterr().out
        assert default_trust_file().parent.stat().st_mode & 0o777 == 0o700
        extra = []
    assert main(["export", "verify", str(vehicle["export"]), *extra]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("OK:") and f"key {fpr} trusted" in out


def test_a_forged_export_with_its_own_key_signature_and_manifest_is_not_trusted(vehicle, tmp_path, capsys):
    forged = make_export(tmp_path / "forged", Ed25519PrivateKey.generate())
    assert verify_export(forged).ok  # consistent in itself: that is the attack
    assert main(["export", "verify", str(forged), "--fingerprint", vehicle["fingerprint"]]) == EXIT_UNTRUSTED
    assert "key NOT TRUSTED" in capsys.readouterr().err
    add_trusted(default_trust_file(), vehicle["fingerprint"], "my truck")
    assert main(["export", "verify", str(forged)]) == EXIT_UNTRUSTED
    capsys.readouterr()
    assert main(["export", "verify", str(vehicle["export"])]) == EXIT_OK
    assert "trusted (my truck)" in capsys.readouterr().out


def test_damage_wins_over_trust(vehicle, tmp_path, capsys):
    export = copy_of(vehicle, tmp_path)
    (export / "consent-history.jsonl").write_text('{"version": 2}\n')
    assert main(["export", "verify", str(export), "--fingerprint", vehicle["fingerprint"]]) == EXIT_DAMAGED
    assert "consent-history.jsonl: content changed" in capsys.readouterr().err


def test_trust_file(tmp_path):
    trust = tmp_path / "dir" / "trusted-keys"
    fpr = "SHA256:" + "ab" * 32
    assert add_trusted(trust, fpr, "car # one")
    assert not add_trusted(trust, fpr.lower().replace("sha256:", ""))  # already there
    assert read_trust_file(trust) == {"ab" * 32: "car one"}
    assert oct(trust.stat().st_mode & 0o777) == "0o600"
    trust.write_text("# mine\n\nSHA256:" + "cd" * 32 + "  old car\nnot-a-fingerprint\n")
    with pytest.raises(ValueError, match=r"trusted-keys:4: not a key fingerprint"):
        read_trust_file(trust)
    assert read_trust_file(tmp_path / "missing") == {}


@pytest.mark.parametrize("text", ["SHA256:" + "AB" * 32, "ab:" * 31 + "ab", " sha256:" + "0f" * 32 + "\n"])
def test_fingerprint_forms(text):
    assert len(parse_fingerprint(text)) == 64


@pytest.mark.parametrize("text", ["", "SHA256:", "SHA256:" + "ab" * 31, "MD5:" + "ab" * 32, "zz" * 32])
def test_not_fingerprints(text):
    with pytest.raises(ValueError, match="not a key fingerprint"):
        parse_fingerprint(text)


def test_key_creation_is_logged_once_with_its_fingerprint(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agent.export.signing"):
        key = load_or_create_key(tmp_path / "state")
        load_or_create_key(tmp_path / "state")
    created = [r for r in caplog.records if "vehicle signing key created" in r.getMessage()]
    assert len(created) == 1 and created[0].levelno == logging.WARNING
    assert f"fingerprint {display_fingerprint(key)}" in created[0].getMessage()


def test_identity_command(tmp_path, capsys, caplog):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    Ledger.in_dir(state).record_purge(["driving"], [1], "test")
    config = tmp_path / "agent.yaml"
    config.write_text(f"vehicle: {{id: truck-9, vin: 1FUJGLDR9CLBP8834}}\nstate: {{dir: {state}}}\n")
    with caplog.at_level(logging.WARNING, logger="agent.export.signing"):
        assert main(["identity", "--state", str(state)]) == 0  # the key is made here: the agent had not yet
    out = capsys.readouterr().out
    fpr = display_fingerprint(load_or_create_key(state))
    assert f"signing key:  {fpr}  (made just now)" in out and "ledger head:  seq 1" in out
    assert any("vehicle signing key created" in r.getMessage() for r in caplog.records)
    assert main(["identity", "--state", str(state), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["signing_key"] == fpr and not info["signing_key_created_now"] and info["vehicle_id"] is None
    assert main(["identity", "--config", str(config), "--json"]) == 0  # pseudonym key not made yet
    assert json.loads(capsys.readouterr().out)["vehicle_id"] is None
    from agent.privacy.pseudonym import Pseudonymizer
    Pseudonymizer.in_dir(state)
    assert main(["identity", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "vehicle id:   v" in out and "keyed pseudonym of the VIN" in out and "1FUJGLDR9CLBP8834" not in out
    assert main(["identity", "--state", str(tmp_path / "nope")]) == 2
    assert "no such state directory" in capsys.readouterr().err


def test_consent_show_names_the_signing_key(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert main(["consent", "show", "--state", str(state)]) == 0
    assert "vehicle signing key: not made yet" in capsys.readouterr().out
    assert not (state / KEY_FILE).exists()  # show never makes it
    key = load_or_create_key(state)
    assert main(["consent", "show", "--state", str(state)]) == 0
    assert f"vehicle signing key: {display_fingerprint(key)}" in capsys.readouterr().out


# -- hostile exports: every failure names its reason ---------------------------------------------------

def _empty_signature(export):
    (export / "manifest.json.sig").write_bytes(b"")


def _blank_signature(export):
    (export / "manifest.json.sig").write_bytes(b"  \n")


def _garbage_signature(export):
    (export / "manifest.json.sig").write_bytes(b"not base64 at all!!\n")


def _short_signature(export):
    (export / "manifest.json.sig").write_bytes(b"AAAA\n")


def _binary_signature(export):
    (export / "manifest.json.sig").write_bytes(b"\xff\xfe\x00")


def _huge_signature(export):
    (export / "manifest.json.sig").write_bytes(b"A" * 100_000)


def _no_signature(export):
    (export / "manifest.json.sig").unlink()


def _no_key(export):
    (export / "vehicle-public-key.pem").unlink()


def _garbage_key(export):
    (export / "vehicle-public-key.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")


def _nested_manifest(export):
    (export / "manifest.json").write_bytes(DEEP)


def _not_json_manifest(export):
    (export / "manifest.json").write_bytes(b"{")


def _no_manifest(export):
    (export / "manifest.json").unlink()


def _resigned(export, change):
    """A manifest changed and signed again with the export's own key (the key was copied): only the manifest's
    own checks can refuse it."""
    manifest = json.loads((export / "manifest.json").read_bytes())
    change(manifest)
    return manifest


HOSTILE = {
    "empty signature": (_empty_signature, "manifest.json.sig: empty: the export is not signed"),
    "blank signature": (_blank_signature, "manifest.json.sig: empty: the export is not signed"),
    "garbage signature": (_garbage_signature, "manifest.json.sig: not a signature (not base64 text)"),
    "short signature": (_short_signature, "not an Ed25519 signature (3 bytes, expected 64)"),
    "binary signature": (_binary_signature, "manifest.json.sig: not a signature"),
    "huge signature": (_huge_signature, "manifest.json.sig: not a signature: larger than 4096 bytes"),
    "missing signature": (_no_signature, "manifest.json.sig: cannot read: No such file"),
    "missing key": (_no_key, "vehicle-public-key.pem: cannot read: No such file"),
    "garbage key": (_garbage_key, "vehicle-public-key.pem: unusable public key"),
    "nested manifest": (_nested_manifest, "manifest.json: unreadable manifest: nested too deep"),
    "broken manifest": (_not_json_manifest, "manifest.json: unreadable manifest: not JSON"),
    "missing manifest": (_no_manifest, "manifest.json: cannot read: No such file"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_failure_names_its_reason(vehicle, tmp_path, capsys, name):
    damage, reason = HOSTILE[name]
    export = copy_of(vehicle, tmp_path)
    damage(export)
    result = verify_export(export, trusted=[vehicle["fingerprint"][7:]])
    assert not result.ok and result.exit_code == EXIT_DAMAGED
    assert reason in result.summary(), result.summary()
    assert main(["export", "verify", str(export), "--fingerprint", vehicle["fingerprint"]]) == EXIT_DAMAGED
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err and not err.splitlines()[0].endswith(": ")


SIGNED_HOSTILE = {
    "path outside": (lambda m: m["files"].append({"path": "../escape", "sha256": "0" * 64, "size": 1}),
                     "../escape: path leaves the export directory"),
    "absolute path": (lambda m: m["files"].append({"path": "/etc/passwd", "sha256": "0" * 64, "size": 1}),
                      "/etc/passwd: path leaves the export directory"),
    "nul in path": (lambda m: m["files"].append({"path": "a\0b", "sha256": "0" * 64, "size": 1}),
                    "not a valid file name"),
    "listed twice": (lambda m: m["files"].append(dict(m["files"][0])), "listed twice in the manifest"),
    "no digest": (lambda m: m["files"][0].pop("sha256"), "manifest entry without a SHA-256"),
    "bool size": (lambda m: m["files"][0].update(size=True), "manifest entry without a size"),
    "no files": (lambda m: m.pop("files"), "unreadable manifest: no list of files"),
    "entry not an object": (lambda m: m["files"].append(7), "manifest entry without a path"),
    "other key named": (lambda m: m["signing"].update(fingerprint_sha256="e" * 64), "names signing key eeee"),
}


@pytest.mark.parametrize("name", sorted(SIGNED_HOSTILE))
def test_hostile_manifests_signed_by_the_vehicle_key_fail_with_a_reason(vehicle, tmp_path, name):
    from agent.export.signing import sign
    change, reason = SIGNED_HOSTILE[name]
    export = copy_of(vehicle, tmp_path)
    manifest = _resigned(export, change)
    data = (json.dumps(manifest, indent=1) + "\n").encode()
    (export / "manifest.json").write_bytes(data)
    (export / "manifest.json.sig").write_text(sign(vehicle["key"], data) + "\n")
    result = verify_export(export, trusted=[vehicle["fingerprint"][7:]])
    assert not result.ok and reason in result.summary(), result.summary()


def test_symlinks_and_odd_files_in_an_export(vehicle, tmp_path):
    export = copy_of(vehicle, tmp_path)
    target = export / "consent-history.jsonl"
    secret = tmp_path / "elsewhere"
    secret.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(secret)  # same content, but not a file of the export
    (export / "extra-link").symlink_to(secret)
    os.mkfifo(export / "pipe")
    result = verify_export(export, trusted=[vehicle["fingerprint"][7:]])
    assert "consent-history.jsonl: is a symbolic link" in result.summary()
    assert "extra-link: not listed in the manifest" in result.summary()
    assert "pipe: not listed in the manifest" in result.summary()
    (export / "consent-history.jsonl").unlink()
    (export / "consent-history.jsonl").mkdir()
    assert "consent-history.jsonl: not a regular file" in verify_export(export).summary()


def test_a_deep_directory_tree_in_an_export_is_no_recursion_error(vehicle, tmp_path, monkeypatch):
    export = copy_of(vehicle, tmp_path)
    monkeypatch.chdir(tmp_path)  # the working directory is given back after the test
    try:
        os.chdir(export)
        for _ in range(1500):  # deeper than the recursion limit, one short name at a time
            os.mkdir("d")
            os.chdir("d")
        open("x", "w").close()
        os.chdir(tmp_path)
        result = verify_export(export, trusted=[vehicle["fingerprint"][7:]])
        assert not result.ok and "not listed in the manifest" in result.summary()
    finally:
        os.chdir(tmp_path)
        # shutil.rmtree (and pytest's clean-up of old runs) recurse: rm does not.
        subprocess.run(["rm", "-rf", str(export / "d")], check=True)


def test_the_remembered_fingerprint_follows_the_key_file(tmp_path, monkeypatch):
    """``key_file_fingerprint`` answers from its memo only while the key file is the one it was made from."""
    from agent.export import signing
    from agent.export.signing import FINGERPRINT_FILE, fingerprint, key_file_fingerprint

    state = tmp_path / "state"
    assert key_file_fingerprint(state, create=False) is None and not (state / KEY_FILE).exists()
    first = key_file_fingerprint(state)
    assert first == fingerprint(load_or_create_key(state))
    memo = state / FINGERPRINT_FILE
    assert json.loads(memo.read_text())["fingerprint"] == first and memo.stat().st_mode & 0o777 == 0o600
    computed: list[bytes] = []
    real = signing._private_key_from
    monkeypatch.setattr(signing, "_private_key_from", lambda data, path: computed.append(data) or real(data, path))
    assert key_file_fingerprint(state) == first and computed == []  # from the memo
    # Another key in the file (restored from a backup, say): the memo is stale and is not believed.
    other = Ed25519PrivateKey.generate()
    (state / KEY_FILE).write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    assert key_file_fingerprint(state) == fingerprint(other) != first and len(computed) == 1
    assert json.loads(memo.read_text())["fingerprint"] == fingerprint(other)
    for damage in ("not json", '{"key_file_sha256": 1}', '["x"]', ""):
        memo.write_text(damage)
        assert key_file_fingerprint(state) == fingerprint(other)
    assert len(computed) == 5
    os.chmod(state / KEY_FILE, 0o644)
    with pytest.raises(signing.SigningKeyError, match="readable by others"):
        key_file_fingerprint(state)
