"""Checking an owner export: the manifest's signature, then every file against the manifest.

The result names each file that changed, went missing or was added.  The
signature is checked with the public key inside the export; pass the
vehicle's known key (``trusted_key``) to also prove *which* vehicle signed it
(an export re-signed with another key is otherwise internally consistent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.export.signing import SigningKeyError, fingerprint, load_public_pem, signature_valid
from agent.export.writer import MANIFEST, PUBLIC_KEY, SIGNATURE, file_digest


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

    @property
    def ok(self) -> bool:
        return self.signature_ok and not self.problems

    @property
    def changed(self) -> list[str]:
        """Names of the files at fault, in the order found."""
        return list(dict.fromkeys(problem.path for problem in self.problems))

    def summary(self) -> str:
        if self.ok:
            return (f"OK: {self.directory}: signature valid (key {self.fingerprint[:16]}...), "
                    f"{self.checked} files match the manifest")
        return f"FAILED: {self.directory}: " + "; ".join(str(p) for p in self.problems)


def verify_export(directory: str | Path, trusted_key: Ed25519PublicKey | None = None) -> VerifyResult:
    root = Path(directory)
    result = VerifyResult(root)
    fail = result.problems.append
    try:
        manifest_bytes = (root / MANIFEST).read_bytes()
    except OSError as exc:
        fail(FileProblem(MANIFEST, f"cannot read: {exc.strerror or exc}"))
        return result
    try:
        signature = (root / SIGNATURE).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        fail(FileProblem(SIGNATURE, f"cannot read: {exc}"))
        signature = ""
    try:
        public = load_public_pem((root / PUBLIC_KEY).read_bytes(), PUBLIC_KEY)
    except (OSError, SigningKeyError) as exc:
        fail(FileProblem(PUBLIC_KEY, f"unusable public key: {exc}"))
        public = None
    if public is not None:
        result.fingerprint = fingerprint(public)
        if trusted_key is not None and fingerprint(trusted_key) != result.fingerprint:
            fail(FileProblem(PUBLIC_KEY, "not the vehicle's key (fingerprint differs from the trusted key)"))
        elif signature and signature_valid(trusted_key or public, manifest_bytes, signature):
            result.signature_ok = True
        elif signature:
            fail(FileProblem(MANIFEST, f"signature does not match (manifest.json or {SIGNATURE} was changed)"))
    try:
        manifest = json.loads(manifest_bytes)
        entries = manifest["files"]
        listed = {str(entry["path"]): (str(entry["sha256"]), int(entry["size"])) for entry in entries}
    except (ValueError, KeyError, TypeError) as exc:
        fail(FileProblem(MANIFEST, f"unreadable manifest: {exc}"))
        return result
    for name, (digest, size) in listed.items():
        path = root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            fail(FileProblem(name, "path leaves the export directory"))
            continue
        if not path.is_file():
            fail(FileProblem(name, "missing"))
            continue
        actual_size = path.stat().st_size
        actual = file_digest(path)
        result.checked += 1
        if actual != digest:
            detail = f"size {actual_size}, manifest says {size}" if actual_size != size else "same size"
            fail(FileProblem(name, f"content changed (SHA-256 {actual[:16]}... != {digest[:16]}..., {detail})"))
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    for name in sorted(present - set(listed) - {MANIFEST, SIGNATURE}):
        fail(FileProblem(name, "not listed in the manifest (added after signing)"))
    return result
