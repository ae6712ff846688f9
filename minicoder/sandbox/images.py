"""Docker images for task environments: the engine, the base task image, builds, content-hash tags.

The base task image ``minicoder/python:3.11`` (Python 3.11, pip, pytest, git, user ``sandbox``
1000:1000, workdir ``/workspace``, label ``minicoder=1``) comes from one recipe, ``envs/base/``,
built one of two ways:

- a registry is reachable (a laptop): ``FROM python:3.11-slim`` (envs/base/Dockerfile);
- offline (this project's machines and CI): ``envs/base/build_rootfs.sh`` debootstraps a Debian
  bookworm rootfs from the apt mirror (bookworm's python3 *is* 3.11), ``docker import`` turns it
  into an image, and the same Dockerfile is built on top with no network. The rootfs tarball is
  cached (``$MINICODER_CACHE``, default ``~/.cache/minicoder``), keyed by the builder's hash.

Design choices:
- Everything is keyed by content. The base image carries a ``minicoder.recipe`` label, the hash
  of envs/base/; ``base_image`` is a no-op when an image with that tag and recipe exists, and
  rebuilds when the recipe changed. ``hashed_tag`` gives task images the same property.
- This is a library for the sandbox backends (``ensure_engine``, ``base_image``,
  ``build_from_dockerfile``, ``image_exists``, ``content_hash``); ``minicoder images base
  [--rebuild]`` (in ``sandbox/cli.py``) is the command line that ``make docker`` runs. The base
  image's name is the task record's ``DEFAULT_IMAGE``.
- Errors name the problem and what to do (``DockerUnavailable``, ``ImageBuildError``); no bare
  tracebacks from deep inside the SDK.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from minicoder.record import DEFAULT_IMAGE

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVS_DIR = REPO_ROOT / "envs"
BASE_RECIPE_DIR = ENVS_DIR / "base"
ENGINE_SCRIPT = ENVS_DIR / "docker_engine.sh"
ROOTFS_SCRIPT = BASE_RECIPE_DIR / "build_rootfs.sh"

REGISTRY_BASE = "python:3.11-slim"  # the FROM of envs/base/Dockerfile when a registry is reachable
ROOTFS_REPO = "minicoder/bookworm-rootfs"  # the imported debootstrap rootfs (offline FROM)
LABEL = "minicoder"  # every image and container minicoder makes carries minicoder=1
RECIPE_LABEL = "minicoder.recipe"
SANDBOX_USER = "1000:1000"  # uid:gid of `sandbox` in the base image; run task containers as this
SANDBOX_WORKDIR = "/workspace"  # owned by `sandbox`
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Log = Callable[[str], None]


class DockerUnavailable(RuntimeError):
    """No Docker engine answers (and none could be started)."""


class ImageBuildError(RuntimeError):
    """An image could not be built, imported or verified; the message says which step and why."""


def _print(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- engine
API_TIMEOUT = 300.0  # seconds per API call: creating a container copies the rootfs under vfs


def _ping(timeout: float, api_timeout: float):
    import docker

    quick = docker.from_env(timeout=timeout)  # a hung daemon fails fast here...
    try:
        quick.ping()
    finally:
        quick.close()
    return docker.from_env(timeout=api_timeout)  # ...while slow but working calls get time


def ensure_engine(start: bool = True, timeout: float = 10, api_timeout: float = API_TIMEOUT, log: Log = _print):
    """A ``docker.DockerClient`` (``api_timeout`` seconds per call) for an engine that answers.

    When none answers within ``timeout`` and ``start`` is true, runs ``envs/docker_engine.sh``
    (installs and starts ``dockerd`` on Linux as root) and tries again. Raises
    ``DockerUnavailable`` saying why.
    """
    try:
        return _ping(timeout, api_timeout)
    except Exception as first:  # the SDK raises several unrelated types for "no engine"
        why = f"{type(first).__name__}: {first}"
    if not start:
        raise DockerUnavailable(f"no Docker engine answers ({why}); run `make docker`")
    if not ENGINE_SCRIPT.is_file():
        raise DockerUnavailable(f"no Docker engine answers ({why}) and {ENGINE_SCRIPT} is missing")
    log(f"no Docker engine answers; running {ENGINE_SCRIPT.relative_to(REPO_ROOT)}")
    proc = subprocess.run(["bash", str(ENGINE_SCRIPT)], check=False)
    if proc.returncode != 0:
        raise DockerUnavailable(f"{ENGINE_SCRIPT.name} could not start an engine (exit {proc.returncode})")
    try:
        return _ping(timeout, api_timeout)
    except Exception as e:
        raise DockerUnavailable(f"{ENGINE_SCRIPT.name} reported success but the SDK gets no answer: {e}") from e


# ------------------------------------------------------------------------------------ content hash
def _hash_path(h: Any, path: Path, name: str) -> None:
    if path.is_dir():
        for child in sorted(path.iterdir(), key=lambda p: p.name):
            if child.name in ("__pycache__", ".DS_Store"):
                continue
            _hash_path(h, child, f"{name}/{child.name}")
    elif path.is_file():
        # Name, executable bit and bytes: what a Docker build context sees of a file.
        h.update(f"F\0{name}\0{int(os.access(path, os.X_OK))}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    else:
        raise FileNotFoundError(f"content_hash: {path} is neither a file nor a directory")


def content_hash(*parts: str | bytes | Path, length: int = 12) -> str:
    """Hex digest (``length`` chars) of files, directory trees and strings, in order.

    A ``Path`` is hashed by content: file names relative to it, executable bits and bytes, so the
    same tree hashes the same wherever it lies. ``str``/``bytes`` are hashed as they are.
    """
    if not 1 <= length <= 64:
        raise ValueError(f"content_hash: length must be in 1..64, got {length}")
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(b"P\0")
            _hash_path(h, part, ".")
        elif isinstance(part, str | bytes):
            data = part.encode() if isinstance(part, str) else part
            h.update(b"S\0" + str(len(data)).encode() + b"\0" + data)
        else:
            raise TypeError(f"content_hash: cannot hash a {type(part).__name__} (use Path, str or bytes)")
    return h.hexdigest()[:length]


_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


def hashed_tag(repository: str, *parts: str | bytes | Path, length: int = 12) -> str:
    """``repository:<content hash of parts>``, e.g. ``minicoder/task-attrs:3f2a9c01b7de``.

    An image with that tag exists exactly when one was built from the same content, so
    ``build_from_dockerfile(..., rebuild=False)`` with it rebuilds only what changed.
    """
    if not _REPO_RE.match(repository):
        raise ValueError(
            f"hashed_tag: {repository!r} is not a valid image repository name "
            "(lower-case letters, digits, separators . _ - and /)"
        )
    return f"{repository}:{content_hash(*parts, length=length)}"


def base_recipe_hash() -> str:
    """Hash of envs/base/ (Dockerfile + offline builder): the base image's ``minicoder.recipe``."""
    return content_hash(BASE_RECIPE_DIR)


# ----------------------------------------------------------------------------------------- images
def image_exists(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def image_labels(client, tag: str) -> dict[str, str]:
    """The labels of image ``tag`` ({} if it has none); raises ``ImageBuildError`` if it is missing."""
    import docker

    try:
        return dict(client.images.get(tag).labels or {})
    except docker.errors.ImageNotFound as e:
        raise ImageBuildError(f"image {tag} does not exist") from e


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def build_context(
    context: Path | None = None,
    files: Mapping[str, str | bytes | Path] | None = None,
    dockerfile_text: str | None = None,
    dockerfile: str = "Dockerfile",
) -> io.BytesIO:
    """An uncompressed tar build context: the tree ``context`` (if given), then ``files``
    (name in the context -> text, bytes or a file to copy), then ``dockerfile_text`` as
    ``dockerfile``. Later entries replace earlier ones of the same name. ``.dockerignore`` is not
    applied: pass only what the image needs.
    """
    entries: dict[str, tuple[str, Any]] = {}
    if context is not None:
        context = Path(context)
        if not context.is_dir():
            raise ImageBuildError(f"build context {context} is not a directory")
        for p in sorted(context.rglob("*")):
            if p.is_file() or p.is_symlink():
                entries[p.relative_to(context).as_posix()] = ("path", p)
    for name, value in (files or {}).items():
        name = name.lstrip("/")
        if not name or ".." in Path(name).parts:
            raise ImageBuildError(f"build context file name {name!r} must be a relative path inside the context")
        entries[name] = ("path", Path(value)) if isinstance(value, Path) else ("data", value)
    if dockerfile_text is not None:
        entries[dockerfile] = ("data", dockerfile_text)
    if dockerfile not in entries:
        raise ImageBuildError(f"the build context has no {dockerfile} (give context=, files= or dockerfile_text=)")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (kind, value) in entries.items():
            if kind == "path":
                if not value.exists() and not value.is_symlink():
                    raise ImageBuildError(f"build context file {value} does not exist")
                tar.add(str(value), arcname=name, recursive=False)
            else:
                _add_bytes(tar, name, value.encode() if isinstance(value, str) else value)
    buf.seek(0)
    return buf


def build_from_dockerfile(
    client,
    tag: str,
    *,
    context: Path | None = None,
    files: Mapping[str, str | bytes | Path] | None = None,
    dockerfile_text: str | None = None,
    dockerfile: str = "Dockerfile",
    buildargs: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    rebuild: bool = False,
    log: Log | None = None,
) -> str:
    """Build an image from a Dockerfile and tag it ``tag``; returns ``tag``.

    Skipped when ``tag`` already exists and not ``rebuild`` (pair with ``hashed_tag``). The image
    gets ``minicoder=1`` plus ``labels``. ``network_mode="none"`` builds without network (RUN steps
    then cannot download anything). ``log`` receives the build output line by line. Raises
    ``ImageBuildError`` with the failing step's output.
    """
    import docker

    if not rebuild and image_exists(client, tag):
        return tag
    ctx = build_context(context, files, dockerfile_text, dockerfile)
    all_labels = {LABEL: "1", **(labels or {})}
    tail: list[str] = []
    try:
        stream = client.api.build(
            fileobj=ctx,
            custom_context=True,
            dockerfile=dockerfile,
            tag=tag,
            rm=True,
            forcerm=True,
            buildargs=dict(buildargs or {}),
            labels=all_labels,
            network_mode=network_mode,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageBuildError(
                    f"building {tag} failed: {detail.strip()}\n--- last build output:\n" + "\n".join(tail[-15:])
                )
            text = chunk.get("stream", "")
            for line in text.splitlines():
                if line.strip():
                    tail.append(line)
                    if log is not None:
                        log(f"  | {line}")
    except docker.errors.APIError as e:
        raise ImageBuildError(f"building {tag} failed: {e.explanation or e}") from e
    if not image_exists(client, tag):
        raise ImageBuildError(f"building {tag} reported success but no image has that tag")
    return tag


# -------------------------------------------------------------------------------------- base image
def debian_mirror(source_files: Iterable[Path] | None = None) -> str:
    """The Debian archive URL apt uses here (first ``deb`` source whose suite is a Debian release,
    not -security/-updates), so debootstrap goes where apt goes. Reads one-line ``.list`` and
    deb822 ``.sources`` files; ``$MINICODER_DEBIAN_MIRROR`` wins; falls back to deb.debian.org.
    """
    if os.environ.get("MINICODER_DEBIAN_MIRROR"):
        return os.environ["MINICODER_DEBIAN_MIRROR"].rstrip("/")
    if source_files is None:
        d = Path("/etc/apt")
        source_files = [d / "sources.list", *sorted((d / "sources.list.d").glob("*.list")),
                        *sorted((d / "sources.list.d").glob("*.sources"))]

    def is_archive(url: str, suites: list[str]) -> bool:
        return url.startswith(("http://", "https://")) and any(
            re.fullmatch(r"(bookworm|trixie|bullseye|stable|testing|sid|unstable)", s) for s in suites
        ) and not url.rstrip("/").endswith("-security")

    for f in source_files:
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        if str(f).endswith(".sources"):  # deb822: stanzas separated by blank lines
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for url in fields.get("uris", "").split():
                    if is_archive(url, fields.get("suites", "").split()):
                        return url.rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options]
                if len(words) >= 3 and words[0] == "deb" and is_archive(words[1], [words[2]]):
                    return words[1].rstrip("/")
    return DEFAULT_MIRROR


def cache_dir() -> Path:
    return Path(os.environ.get("MINICODER_CACHE") or Path.home() / ".cache" / "minicoder")


def registry_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a TCP connection to Docker Hub? (A quick 'no' on offline machines,
    before asking the daemon to pull, which can hang where the network drops packets.)"""
    try:
        with socket.create_connection(("registry-1.docker.io", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _rootfs_tarball(rebuild: bool, log: Log) -> Path:
    tar = cache_dir() / "images" / f"bookworm-python3.11-rootfs-{content_hash(ROOTFS_SCRIPT)}.tar"  # name: see _remove_superseded
    if tar.is_file() and not rebuild:
        log(f"rootfs tarball cached: {tar}")
        return tar
    if sys.platform != "linux" or os.geteuid() != 0:
        raise ImageBuildError(
            "the offline base-image build needs Linux and root (debootstrap); no registry is reachable "
            f"to pull {REGISTRY_BASE}. Run `sudo make docker`, or set MINICODER_BASE_SOURCE=registry "
            "where a registry is reachable."
        )
    mirror = debian_mirror()
    log(f"building the rootfs tarball with debootstrap from {mirror} (about a minute on an idle 2-core machine)")
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOTFS_SCRIPT), str(tar), mirror], check=False)
    if proc.returncode != 0 or not tar.is_file():
        raise ImageBuildError(f"{ROOTFS_SCRIPT.name} failed (exit {proc.returncode}); see its output above")
    log(f"rootfs tarball built in {time.perf_counter() - t0:.1f}s")
    return tar


def _offline_base(client, rebuild: bool, log: Log) -> str:
    """Import the debootstrap rootfs (cached by hash) and return its tag: the offline FROM."""
    tar = _rootfs_tarball(rebuild, log)
    tag = f"{ROOTFS_REPO}:{content_hash(ROOTFS_SCRIPT)}"
    if rebuild or not image_exists(client, tag):
        log(f"docker import {tar.name} -> {tag}")
        t0 = time.perf_counter()
        repo, _, version = tag.partition(":")
        try:
            client.api.import_image(src=str(tar), repository=repo, tag=version, changes=[f"LABEL {LABEL}=1"])
        except Exception as e:
            raise ImageBuildError(f"docker import of {tar} failed: {e}") from e
        if not image_exists(client, tag):
            raise ImageBuildError(f"docker import of {tar} reported success but {tag} does not exist")
        log(f"imported in {time.perf_counter() - t0:.1f}s")
    return tag


def _pick_source(client, source: str, log: Log) -> str:
    """'registry' or 'offline' for source 'auto': registry when python:3.11-slim is here or pullable."""
    if source != "auto":
        return source
    if image_exists(client, REGISTRY_BASE):
        return "registry"
    if not registry_reachable():
        log(f"no image registry reachable: building offline (debootstrap) instead of FROM {REGISTRY_BASE}")
        return "offline"
    log(f"pulling {REGISTRY_BASE}")
    try:
        repo, _, version = REGISTRY_BASE.partition(":")
        client.images.pull(repo, tag=version)
        return "registry"
    except Exception as e:
        log(f"pulling {REGISTRY_BASE} failed ({type(e).__name__}: {str(e)[:200]}); building offline instead")
        return "offline"


def base_image(client, tag: str = DEFAULT_IMAGE, rebuild: bool = False, source: str | None = None, log: Log = _print) -> str:
    """Make sure the base task image ``tag`` exists and is built from the current envs/base/ recipe.

    A no-op when it exists with the current ``minicoder.recipe`` label (unless ``rebuild``).
    ``source``: 'auto' (default, or ``$MINICODER_BASE_SOURCE``), 'registry' (``FROM
    python:3.11-slim``) or 'offline' (debootstrap + ``docker import``). Verifies the result (see
    ``verify_image``) and returns ``tag``.
    """
    source = source or os.environ.get("MINICODER_BASE_SOURCE", "auto")
    if source not in ("auto", "registry", "offline"):
        raise ValueError(f"base_image: source must be auto, registry or offline, got {source!r}")
    recipe = base_recipe_hash()
    old_id = client.images.get(tag).id if image_exists(client, tag) else None
    if not rebuild and old_id is not None:
        have = image_labels(client, tag).get(RECIPE_LABEL)
        if have == recipe:
            return tag
        log(f"{tag} exists but was built from another recipe ({have} != {recipe}): rebuilding")
    source = _pick_source(client, source, log)
    if source == "registry":
        buildargs, network = {"BASE": REGISTRY_BASE}, None
    else:
        # Everything is in the rootfs already: the Dockerfile's install steps are no-ops, no network.
        buildargs, network = {"BASE": _offline_base(client, rebuild, log)}, "none"
    log(f"building {tag} FROM {buildargs['BASE']} (envs/base/Dockerfile)")
    t0 = time.perf_counter()
    build_from_dockerfile(
        client, tag, context=BASE_RECIPE_DIR, buildargs=buildargs, network_mode=network,
        labels={RECIPE_LABEL: recipe, "minicoder.base-source": source}, rebuild=True,
    )
    log(f"built in {time.perf_counter() - t0:.1f}s; checking it")
    verify_image(client, tag)
    _remove_superseded(client, tag, old_id, buildargs["BASE"] if source == "offline" else None, log)
    return tag


def _remove_superseded(client, tag: str, old_id: str | None, rootfs_tag: str | None, log: Log) -> None:
    """Free the disk of what a rebuild replaced: the previous base image, older rootfs images and
    tarballs. Only what nothing uses: the engine refuses to delete an image that containers or
    other images (task images built on it) still use, and that refusal is fine."""
    import docker

    doomed = []
    if old_id is not None and old_id != client.images.get(tag).id:
        doomed.append(old_id)
    if rootfs_tag is not None:
        doomed += [t for img in client.images.list(name=ROOTFS_REPO) for t in img.tags if t != rootfs_tag]
        keep = f"bookworm-python3.11-rootfs-{rootfs_tag.partition(':')[2]}.tar"
        for old in (cache_dir() / "images").glob("bookworm-python3.11-rootfs-*.tar"):
            if old.name != keep:
                old.unlink(missing_ok=True)
                log(f"removed the superseded rootfs tarball {old.name}")
    for ref in doomed:
        try:
            client.images.remove(ref)
            log(f"removed the superseded image {ref[:19] if ref.startswith('sha256:') else ref}")
        except docker.errors.APIError as e:  # still in use: keep it
            log(f"kept the superseded image {ref[:19] if ref.startswith('sha256:') else ref} ({e.explanation or e})")


_PROBE = r"""
import json, os, subprocess, sys
out = {"python": sys.version.split()[0], "uid": os.getuid(), "cwd": os.getcwd(),
       "cwd_writable": os.access(os.getcwd(), os.W_OK)}
for name, cmd in (("pytest", [sys.executable, "-m", "pytest", "--version"]), ("git", ["git", "--version"])):
    p = subprocess.run(cmd, capture_output=True, text=True)
    out[name] = (p.stdout + p.stderr).strip() if p.returncode == 0 else None
print(json.dumps(out))
"""


def run_probe(client, image: str, command: list[str], *, user: str = SANDBOX_USER, network_mode: str = "none",
              labels: Mapping[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run ``command`` in a fresh container of ``image`` and remove it; returns (exit code, output).

    The container is labelled ``minicoder=1`` (plus ``labels``) so a cleanup can find it if this
    process dies before removing it.
    """
    # create, then start inside the try: a container whose start fails is removed too
    container = client.containers.create(
        image, command, user=user, network_mode=network_mode, labels={LABEL: "1", **(labels or {})}
    )
    try:
        container.start()
        status = container.wait(timeout=timeout)
        return int(status["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def verify_image(client, tag: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """Run the base image as ``sandbox`` with no network and check it has what tasks need:
    Python 3.11, pytest, git, a writable workdir. Returns what it found; raises ``ImageBuildError``."""
    code, out = run_probe(client, tag, ["python3", "-c", _PROBE], labels={"minicoder.role": "verify"})
    try:
        found = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise ImageBuildError(f"{tag}: the probe printed no result (exit {code}):\n{out[-2000:]}") from e
    problems = []
    if not found["python"].startswith("3.11."):
        problems.append(f"python is {found['python']}, not 3.11")
    if not found["pytest"]:
        problems.append("`python3 -m pytest` does not run")
    if not found["git"]:
        problems.append("git does not run")
    if found["uid"] != int(SANDBOX_USER.split(":")[0]) or not found["cwd_writable"] or found["cwd"] != SANDBOX_WORKDIR:
        problems.append(f"user/workdir wrong: uid {found['uid']} in {found['cwd']} (writable: {found['cwd_writable']})")
    if code != 0 or problems:
        raise ImageBuildError(f"{tag} failed its check: {'; '.join(problems) or f'exit {code}'}")
    return found


def valid_repository(repo: str) -> bool:
    """Whether `repo` (an image name without its tag) is a valid Docker repository name."""
    return bool(_REPO_RE.match(repo))
