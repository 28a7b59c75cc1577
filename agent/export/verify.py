"""Checking an owner export: the manifest's signature, then every file against the manifest, then the key.

The result names each file that changed, went missing or was added, and every failure says why.  The
signature is checked with the public key inside the export, which proves the export is *intact*; whether it
was made by *your vehicle* depends on the key: ``trusted`` (fingerprints the owner got out of band, see
agent/export/trust.py) or ``trusted_key`` (the vehicle's public key) make the result say so.  An intact export
signed by a key nobody vouched for is "signature valid, key NOT TRUSTED" (``EXIT_UNTRUSTED``): a new key, a
new signature and a new manifest are consistent in themselves.

Everything read is bounded (sizes, JSON nesting) and every listed path must stay inside the export as a
plain file: hostile exports give a named reason, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agent.export.signing import SigningKeyError, display_fingerprint, fingerprint, load_public_pem
from agent.export.writer import MANIFEST, PUBLIC_KEY, SIGNATURE, file_digest
from agent.ledger_chain import NestingError, loads_limited

if TYPE_CHECKING:  # cryptography itself is imported where a signature is checked (agent/export/signing.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXIT_OK, EXIT_DAMAGED, EXIT_UNTRUSTED = 0, 1, 3
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 4096
MAX_KEY_BYTES = 64 << 10
MANIFEST_DEPTH = 16  # the manifest nests 4 levels (details.triggers[...])
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class VerifyResult:
    directory: Path
    checked: int = 0
    signature_ok: bool = False
    fingerprint: str = ""
    problems: list[FileProblem] = field(default_factory=list)
    trusted: bool | None = None  # None: no trusted key or fingerprint was given
    trusted_as: str = ""  # the label of the trusted fingerprint it matched

    @property
    def ok(self) -> bool:
        """Intact: the signature is valid and every file matches the manifest (whoever signed it)."""
        return self.signature_ok and not self.problems

    @property
    def exit_code(self) -> int:
        if not self.ok:
            return EXIT_DAMAGED
        return EXIT_UNTRUSTED if self.trusted is False else EXIT_OK

    @property
    def changed(self) -> list[str]:
        """Names of the files at fault, in the order found."""
        return list(dict.fromkeys(problem.path for problem in self.problems))

    def summary(self) -> str:
        key = display_fingerprint(self.fingerprint) if self.fingerprint else "?"
        if not self.ok:
            reasons = "; ".join(str(p) for p in self.problems) or f"{SIGNATURE}: the signature was not verified"
            return f"FAILED: {self.directory}: {reasons}"
        files = f"{self.checked} files match the manifest"
        if self.trusted is None:
            return f"OK: {self.directory}: signature valid (key {key}), {files}; the key was not checked"
        if self.trusted:
            label = f" ({self.trusted_as})" if self.trusted_as else ""
            return f"OK: {self.directory}: signature valid, key {key} trusted{label}, {files}"
        return (f"NOT TRUSTED: {self.directory}: signature valid, key NOT TRUSTED ({key}): {files}, but nothing "
                "shows this key is your vehicle's. Compare the fingerprint with `vehicle-agent identity` on the "
                "vehicle, then pass it with --fingerprint or keep it with `vehicle-agent export trust`")


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def _signature(root: Path, fail) -> bytes | None:
    try:
        text = _read(root / SIGNATURE, MAX_SIGNATURE_BYTES).decode("ascii").strip()
    except OSError as exc:
        fail(FileProblem(SIGNATURE, f"cannot read: {exc.strerror or exc}"))
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        fail(FileProblem(SIGNATURE, f"not a signature: {exc}"))
        return None
    if not text:
        fail(FileProblem(SIGNATURE, "empty: the export is not signed"))
        return None
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        fail(FileProblem(SIGNATURE, "not a signature (not base64 text)"))
        return None
    if len(signature) != 64:
        fail(FileProblem(SIGNATURE, f"not an Ed25519 signature ({len(signature)} bytes, expected 64)"))
        return None
    return signature


def _public_key(root: Path, fail) -> Ed25519PublicKey | None:
    try:
        return load_public_pem(_read(root / PUBLIC_KEY, MAX_KEY_BYTES), PUBLIC_KEY)
    except OSError as exc:
        fail(FileProblem(PUBLIC_KEY, f"cannot read: {exc.strerror or exc}"))
    except (SigningKeyError, ValueError) as exc:
        fail(FileProblem(PUBLIC_KEY, f"unusable public key: {exc}"))
    return None


def _listed(manifest_bytes: bytes, fail) -> tuple[dict[str, tuple[str, int]], dict[str, Any]] | None:
    """The manifest's files (path -> (sha256, size)), each entry checked; None when it is unreadable."""
    try:
        manifest = loads_limited(manifest_bytes, MANIFEST_DEPTH)
    except NestingError as exc:
        fail(FileProblem(MANIFEST, f"unreadable manifest: {exc}"))
        return None
    except ValueError as exc:
        fail(FileProblem(MANIFEST, f"unreadable manifest: not JSON ({exc})"))
        return None
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        fail(FileProblem(MANIFEST, "unreadable manifest: no list of files"))
        return None
    listed: dict[str, tuple[str, int]] = {}
    for index, entry in enumerate(entries):
        name = entry.get("path") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        where = name if isinstance(name, str) and name and len(name) <= 255 else f"{MANIFEST} files[{index}]"
        if not isinstance(name, str) or not name:
            fail(FileProblem(where, "manifest entry without a path"))
        elif (problem := _bad_path(name)) is not None:
            fail(FileProblem(where[:255], problem))
        elif name in listed:
            fail(FileProblem(where, "listed twice in the manifest"))
        elif not (isinstance(digest, str) and _HEX64.match(digest)):
            fail(FileProblem(where, "manifest entry without a SHA-256"))
        elif not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            fail(FileProblem(where, "manifest entry without a size"))
        else:
            listed[name] = (digest, size)
    return listed, manifest


def _bad_path(name: str) -> str | None:
    if "\0" in name or "\\" in name:
        return "not a valid file name"
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or str(pure) != name or name in (MANIFEST, SIGNATURE):
        return "path leaves the export directory" if pure.is_absolute() or ".." in pure.parts else \
            "not a valid file name"
    return None


def _check_file(root: Path, name: str, digest: str, size: int, result: VerifyResult) -> None:
    fail = result.problems.append
    path = root / name
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        inside = False
    if path.is_symlink() or not inside:
        fail(FileProblem(name, "is a symbolic link (an export holds plain files only)"))
        return
    if not path.exists():
        fail(FileProblem(name, "missing"))
        return
    if not path.is_file():
        fail(FileProblem(name, "not a regular file"))
        return
    actual_size = path.stat().st_size
    actual = file_digest(path)
    result.checked += 1
    if actual != digest:
        detail = f"size {actual_size}, manifest says {size}" if actual_size != size else "same size"
        fail(FileProblem(name, f"content changed (SHA-256 {actual[:16]}... != {digest[:16]}..., {detail})"))


def _present(root: Path, limit: int = 100_000) -> set[str]:
    """Every non-directory under ``root`` (symbolic links are not followed), without recursion."""
    found: set[str] = set()
    stack = [root]
    while stack and len(found) < limit:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        found.add(Path(entry.path).relative_to(root).as_posix())
        except OSError:
            continue
    return found


def _judge_trust(result: VerifyResult, trusted_key: Ed25519PublicKey | None,
                 trusted: Collection[str] | Mapping[str, str] | None) -> bool:
    """Set ``result.trusted``; False when the key is not ``trusted_key`` (a problem: nothing else is checked)."""
    if trusted_key is not None and fingerprint(trusted_key) != result.fingerprint:
        result.problems.append(FileProblem(PUBLIC_KEY, "not the vehicle's key (fingerprint differs from the "
                                                       "trusted key)"))
        result.trusted = False
        return False
    if trusted_key is not None:
        result.trusted = True
    if trusted is not None:
        labels = trusted if isinstance(trusted, Mapping) else dict.fromkeys(trusted, "")
        if result.fingerprint in labels:
            result.trusted, result.trusted_as = True, labels[result.fingerprint]
        elif trusted_key is None:
            result.trusted = False
    return True


def verify_export(directory: str | Path, trusted_key: Ed25519PublicKey | None = None,
                  trusted: Collection[str] | Mapping[str, str] | None = None) -> VerifyResult:
    """``trusted``: fingerprints (64 hex, or hex -> label) of keys the owner vouches for."""
    root = Path(directory)
    result = VerifyResult(root)
    fail = result.problems.append
    try:
        manifest_bytes = _read(root / MANIFEST, MAX_MANIFEST_BYTES)
    except OSError as exc:
        fail(FileProblem(MANIFEST, f"cannot read: {exc.strerror or exc}"))
        return result
    except ValueError as exc:
        fail(FileProblem(MANIFEST, f"unreadable manifest: {exc}"))
        return result
    signature = _signature(root, fail)
    public = _public_key(root, fail)
    if public is not None:
        result.fingerprint = fingerprint(public)
        if _judge_trust(result, trusted_key, trusted) and signature is not None:
            from cryptography.exceptions import InvalidSignature

            try:
                public.verify(signature, manifest_bytes)
                result.signature_ok = True
            except InvalidSignature:
                fail(FileProblem(MANIFEST, f"signature does not match (manifest.json or {SIGNATURE} was changed)"))
    parsed = _listed(manifest_bytes, fail)
    if parsed is None:
        return result
    listed, manifest = parsed
    signing = manifest.get("signing") if isinstance(manifest.get("signing"), dict) else {}
    named = signing.get("fingerprint_sha256")
    if result.fingerprint and isinstance(named, str) and named != result.fingerprint:
        fail(FileProblem(MANIFEST, f"names signing key {str(named)[:16]}..., but {PUBLIC_KEY} is "
                                   f"{result.fingerprint[:16]}..."))
    for name, (digest, size) in listed.items():
        _check_file(root, name, digest, size, result)
    for name in sorted(_present(root) - set(listed) - {MANIFEST, SIGNATURE}):
        fail(FileProblem(name, "not listed in the manifest (added after signing)"))
    return result


__all__ = ["EXIT_DAMAGED", "EXIT_OK", "EXIT_UNTRUSTED", "FileProblem", "VerifyResult", "verify_export"]
