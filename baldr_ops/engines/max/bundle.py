"""Precompiled bundles: MAX's compiled graphs plus a manifest saying what they were compiled for.

A bundle is a directory:

    baldr-bundle.json    the manifest (BundleManifest): schema version, MAX version, device kind and
                         architecture, model identity (config and weights sha256), the options that
                         shape compilation, and sha256 + size of every payload file
    mefs/                MAX's `--export-mefs` output (payload "mefs", MAX >= 26.7), or
    cache/               a whole MODULAR_CACHE_DIR compiled from empty (payload "cache", older MAX)

It is verified before use (every file hashed, nothing missing, nothing extra, the manifest's own
digest intact): a truncated or altered bundle is refused with a UserError, never half-loaded. It is
then compared with this machine and the request; on any difference it is not used, and the note says
which field differs. `plan_with_bundle` is the launch hook; `export_bundle` writes one.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baldr_ops import __version__
from baldr_ops.engines.max.command import EngineOptions
from baldr_ops.atomic import atomic_copy, atomic_directory, atomic_write
from baldr_ops.errors import UserError, first_invalid_field
from baldr_ops.paths import cache_root, modular_cache_dir

SCHEMA_VERSION = 1
MANIFEST_NAME = "baldr-bundle.json"
Payload = Literal["mefs", "cache"]
PAYLOAD_DIRS: dict[str, str] = {"mefs": "mefs", "cache": "cache"}
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
# CPU flags that change the code MAX's compiler emits for the host (vector ISA and friends).
_ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "bmi", "vnni", "sve", "asimd", "neon", "i8mm", "bf16",
                 "fp16", "dotprod")
_CHUNK = 4 << 20
_REBUILD_HINT = "copy the bundle again, or rebuild it: baldr-ops compile --export DIR"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str


class DeviceIdentity(BaseModel):
    """What the graphs were compiled for. `name` is informational; the rest must match.

    The host CPU counts on a GPU too: MAX compiles host-side graphs for it (the sampler with
    --sample-on-host runs there; a GB10 bundle cross-compiled on x86_64 carries an x86_64 sampler)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cpu", "gpu"]
    arch: str                       # cpu: the machine (x86_64, aarch64); gpu: sm_XY
    host: str                       # the host CPU's machine
    isa: list[str] = Field(default_factory=list)   # the host CPU's vector-ISA flags
    name: str | None = None


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    config_sha256: str
    weights_sha256: str             # sha256 over "file\0sha256\n" of every weight file, sorted
    weights_bytes: int
    weight_files: list[str]


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    payload: Payload
    created_at: str
    created_by: str
    max_version: str
    device: DeviceIdentity
    model: ModelIdentity
    options: dict                   # EngineOptions.compile_identity()
    compile_seconds: float | None = None
    files: dict[str, FileEntry]     # path relative to the bundle (posix) -> size and sha256
    digest: str = ""                # sha256 of the canonical JSON of every other field

    def payload_dir(self, bundle: Path) -> Path:
        return bundle / PAYLOAD_DIRS[self.payload]

    def compute_digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"digest"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Mismatch(BaseModel):
    field: str
    bundle: str
    here: str

    def text(self) -> str:
        return f"{self.field} differs (bundle {self.bundle}, here {self.here})"


class BundleUse(BaseModel):
    """What launch (or compile --import) does with a bundle: extra MAX args, extra env, a note."""

    used: bool
    serve_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    note: str
    mismatches: list[Mismatch] = Field(default_factory=list)
    payload: Payload | None = None


# -- hashing ----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_cache_file() -> Path:
    return cache_root() / "file-hashes.json"


def cached_sha256(path: Path) -> str:
    """sha256 of a (large) file, remembered by path, size and mtime so a 60 GB model is hashed once."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = _hash_cache_file()
    known = read_json_dict(store)
    if isinstance(known.get(key), str):
        return known[key]
    value = sha256_file(path)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}
    known[key] = value
    write_json_quietly(store, known)  # a cache we cannot write only costs a re-hash next time
    return value


def read_json_dict(path: Path) -> dict:
    """A JSON object from a small state file; {} when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_quietly(path: Path, data: dict) -> None:
    """Write a small state file atomically; a failure is ignored (it is only a cache)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass


# -- identities -------------------------------------------------------------------------------

def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def model_identity(model_dir: Path, name: str | None = None) -> ModelIdentity:
    """Config and weights sha256 of a model directory (weights hashed once per file version)."""
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise UserError(f"{model_dir} has no config.json", hint="give a Hugging Face model directory")
    weights = weight_files(model_dir)
    if not weights:
        raise UserError(f"{model_dir} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    combined = hashlib.sha256()
    for path in weights:
        combined.update(f"{path.name}\0{cached_sha256(path)}\n".encode())
    return ModelIdentity(name=name or model_dir.name, config_sha256=sha256_file(config),
                         weights_sha256=combined.hexdigest(), weights_bytes=sum(p.stat().st_size for p in weights),
                         weight_files=[p.name for p in weights])


def _cpu_isa(cpuinfo: str | None = None) -> list[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted({f for f in value.split() if f.startswith(_ISA_PREFIXES)})
    return []


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu_index(devices: str) -> int:
    _, _, ids = devices.partition(":")
    first = ids.split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def _gpu_identity(index: int) -> tuple[str, str | None]:
    """(sm_XY, name) of a GPU, read through NVML; ("unknown", None) when NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            return f"sm_{major}{minor}", name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML, no such GPU: the arch is unknown, which never matches
        return "unknown", None


def device_identity(devices: str, gpu_arch: str | None = None, gpu_name: str | None = None) -> DeviceIdentity:
    """This machine as `devices` uses it; `gpu_arch` names a GPU it lacks (a --target cross-compile)."""
    host, isa = platform.machine(), _cpu_isa()
    if devices.startswith("gpu"):
        arch, name = (gpu_arch, gpu_name) if gpu_arch else _gpu_identity(_gpu_index(devices))
        return DeviceIdentity(kind="gpu", arch=arch, host=host, isa=isa, name=name)
    return DeviceIdentity(kind="cpu", arch=host, host=host, isa=isa, name=_cpu_name())


# -- reading and verifying --------------------------------------------------------------------

def _corrupt(bundle: Path, what: str) -> UserError:
    return UserError(f"precompiled bundle {bundle} is corrupt: {what}; refusing to use any of it",
                     hint=_REBUILD_HINT)


def read_manifest(bundle: Path) -> BundleManifest:
    """The manifest, checked for schema and self-digest (the payload is not hashed here)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UserError(f"precompiled bundle {bundle} does not exist or is not a directory",
                        hint="make one with: baldr-ops compile --export DIR")
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{bundle} is not a baldr-ops bundle: {MANIFEST_NAME} is missing",
                        hint="make one with: baldr-ops compile --export DIR")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(bundle, f"{MANIFEST_NAME} is not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _corrupt(bundle, f"{MANIFEST_NAME} is not a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"precompiled bundle {bundle} has manifest schema_version {version!r}; this baldr-ops "
                        f"{__version__} reads schema_version {SCHEMA_VERSION}",
                        hint="rebuild the bundle with this baldr-ops: baldr-ops compile --export DIR")
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        where, message = first_invalid_field(exc)
        raise _corrupt(bundle, f"{MANIFEST_NAME} field {where}: {message}") from None
    if manifest.digest != manifest.compute_digest():
        raise _corrupt(bundle, f"{MANIFEST_NAME} was altered (its digest does not match its contents)")
    return manifest


def _payload_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def verify_bundle(bundle: Path) -> BundleManifest:
    """Read the manifest and hash every payload file; raise UserError on any difference."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    payload_root = PAYLOAD_DIRS[manifest.payload]
    for rel, entry in manifest.files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts or parts[0] != payload_root:
            raise _corrupt(bundle, f"manifest names {rel!r}, outside its {payload_root}/ payload")
        path = bundle / rel
        if path.is_symlink() or not path.is_file():
            raise _corrupt(bundle, f"{rel} is missing")
        size = path.stat().st_size
        if size != entry.size:
            state = "truncated" if size < entry.size else "longer than recorded"
            raise _corrupt(bundle, f"{rel} is {state} ({size} bytes, manifest says {entry.size})")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise _corrupt(bundle, f"{rel} was altered (sha256 {actual[:12]}…, manifest says {entry.sha256[:12]}…)")
    payload = bundle / payload_root
    extra = [rel for rel in _payload_files(payload) if f"{payload_root}/{rel}" not in manifest.files] \
        if payload.is_dir() else []
    if extra:
        raise _corrupt(bundle, f"{payload_root}/{extra[0]} is not in the manifest"
                       + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    if not manifest.files:
        raise _corrupt(bundle, "the manifest lists no payload files")
    return manifest


# -- comparing --------------------------------------------------------------------------------

def _short(value) -> str:
    text = "none" if value is None else str(value)
    return text[:16] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def compare(manifest: BundleManifest, options: EngineOptions, max_version: str,
            device: DeviceIdentity | None = None, model: ModelIdentity | None = None) -> list[Mismatch]:
    """Every field where the bundle differs from this machine and request (empty: usable).

    The weights are hashed only when their total size matches (a size difference already says enough).
    """
    out: list[Mismatch] = []

    def check(name: str, bundle_value, here_value) -> None:
        if bundle_value != here_value:
            out.append(Mismatch(field=name, bundle=_short(bundle_value), here=_short(here_value)))

    check("max_version", manifest.max_version, max_version)
    device = device or device_identity(options.devices)
    check("device.kind", manifest.device.kind, device.kind)
    check("device.arch", manifest.device.arch, device.arch)
    check("device.host", manifest.device.host, device.host)
    if manifest.device.isa != device.isa:
        missing = sorted(set(manifest.device.isa) - set(device.isa))
        extra = sorted(set(device.isa) - set(manifest.device.isa))
        out.append(Mismatch(field="device.isa", bundle="+" + ",".join(missing) if missing else "(subset)",
                            here="+" + ",".join(extra) if extra else "(subset)"))
    here_options = options.compile_identity()
    for key in sorted(set(manifest.options) | set(here_options)):
        check(f"options.{key}", manifest.options.get(key), here_options.get(key))
    model_dir = Path(options.model_path)
    config = model_dir / "config.json"
    config_sha = sha256_file(config) if config.is_file() else "missing"
    check("model.config_sha256", manifest.model.config_sha256, model.config_sha256 if model else config_sha)
    if model is None:
        files = weight_files(model_dir) if model_dir.is_dir() else []
        size = sum(p.stat().st_size for p in files)
        if size != manifest.model.weights_bytes:
            out.append(Mismatch(field="model.weights_bytes", bundle=str(manifest.model.weights_bytes), here=str(size)))
            return out
        model = model_identity(model_dir)
    check("model.weights_sha256", manifest.model.weights_sha256, model.weights_sha256)
    return out


# -- the launch hook --------------------------------------------------------------------------

def seed_cache(payload: Path, target: Path) -> int:
    """Copy a bundle's cache payload into a MODULAR_CACHE_DIR, never overwriting; files copied."""
    copied = 0
    for rel in _payload_files(payload):
        dest = target / rel
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(payload / rel, dest)
        copied += 1
    return copied


def check_bundle(bundle: Path, options: EngineOptions, quirks) -> tuple[BundleManifest, list[Mismatch]]:
    """Verify a bundle (UserError when corrupt) and list where it differs from this machine and request.

    No side effects: `compile --check --import DIR` and `plan_with_bundle` both start here."""
    manifest = verify_bundle(Path(bundle))
    mismatches = compare(manifest, options, quirks.version)
    if manifest.payload == "mefs" and not quirks.has_mef_export:
        mismatches.append(Mismatch(field="max.mef_support", bundle="mefs", here=f"MAX {quirks.version} has none"))
    return manifest, mismatches


def plan_with_bundle(bundle: Path, options: EngineOptions, quirks) -> BundleUse:
    """Verify a bundle and decide how MAX should use it for these options on this machine.

    Raises UserError when the bundle is corrupt (never half-loaded). When it does not match the
    machine or the request it returns `used=False`, no args, and a note naming each field that
    differs ("compiling normally"). When it matches: `--precompiled-mefs DIR` for a MEF payload, or
    MODULAR_CACHE_DIR seeded from the bundle's cache payload.
    """
    bundle = Path(bundle).expanduser().resolve()
    manifest, mismatches = check_bundle(bundle, options, quirks)
    if mismatches:
        return BundleUse(used=False, mismatches=mismatches, payload=manifest.payload,
                         note=f"precompiled bundle {bundle} not used: "
                              + "; ".join(m.text() for m in mismatches) + "; compiling normally")
    payload = manifest.payload_dir(bundle)
    what = f"MAX {manifest.max_version}, {manifest.device.kind} {manifest.device.arch}, " \
           f"model {manifest.model.weights_sha256[:12]}"
    if manifest.payload == "mefs":
        count = sum(1 for rel in manifest.files if rel.endswith(".mef"))
        return BundleUse(used=True, payload="mefs", serve_args=["--precompiled-mefs", str(payload)],
                         note=f"precompiled bundle {bundle} matches ({what}): {count} compiled graphs, no compile")
    target = modular_cache_dir()
    copied = seed_cache(payload, target)
    return BundleUse(used=True, payload="cache", env={"MODULAR_CACHE_DIR": str(target)},
                     note=f"precompiled bundle {bundle} matches ({what}): compile cache seeded into {target} "
                          f"({copied} files copied)")


# -- writing ----------------------------------------------------------------------------------

def export_bundle(dest: Path, payload_kind: Payload, source: Path, options: EngineOptions, max_version: str,
                  compile_seconds: float | None = None, model_name: str | None = None,
                  model: ModelIdentity | None = None, device: DeviceIdentity | None = None) -> BundleManifest:
    """Copy `source` (a --export-mefs dir or a MODULAR_CACHE_DIR) into a new bundle at `dest`.

    Written beside `dest` and renamed into place at the end, so a bundle is whole or absent.
    """
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} already exists and is not empty", hint="remove it or choose another --export DIR")
    source = Path(source)
    if not source.is_dir() or not _payload_files(source):
        raise UserError(f"nothing to export: {source} holds no compiled artifacts")
    with atomic_directory(dest, replace=True) as tmp:  # dest, if it exists, is an empty directory
        root = PAYLOAD_DIRS[payload_kind]
        files: dict[str, FileEntry] = {}
        for rel in _payload_files(source):
            target = tmp / root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
            files[f"{root}/{rel}"] = FileEntry(size=target.stat().st_size, sha256=sha256_file(target))
        manifest = BundleManifest(
            payload=payload_kind, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            created_by=f"baldr-ops {__version__}", max_version=max_version,
            device=device or device_identity(options.devices),
            model=model or model_identity(Path(options.model_path), model_name),
            options=options.compile_identity(), compile_seconds=compile_seconds, files=files)
        manifest.digest = manifest.compute_digest()
        (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest
