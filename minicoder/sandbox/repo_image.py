"""Task images: the base image + a dependency set (+ a repository's base-commit tree).

    tag = ensure_deps_image(["six==1.16.0"])  # e.g. "minicoder/deps:5be1c0a2d4f3": what evaluations use
    tag = ensure_repo_image(task)        # e.g. "minicoder/env-minicoder-calc:3f2a9c01b7de"

`ensure_deps_image` (from `envs/repo/Dockerfile.deps`) holds only the packages: its tag is a
content hash of the template, the base image's id and the requirements, so every task with the
same dependency set shares one image, whatever its repository or commit. The docker backend runs
tasks that name `python_packages` in it (the workspace is bind-mounted, so the image needs no
repository tree). `ensure_repo_image` adds the base-commit tree at /testbed, for agents and for
running an image by hand.

Built from `envs/repo/Dockerfile.template` with the helpers of `images.py` (owned by the engine
stage): the tag is a content hash of the template, the base image's id, the requirements and the
repository snapshot, so an unchanged repository is never rebuilt and tasks of one repository at
one commit share one image (and, through Docker's layer cache, one dependency layer across
commits). The build runs with network "none": wheels are downloaded on the host with `pip
download` into the shared wheelhouse (the same one the local backend installs from) and enter the
image through the build context.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from minicoder.gitdiff import materialize_repo
from minicoder.record import DEFAULT_IMAGE, Task
from minicoder.sandbox.base import SandboxError

TEMPLATE = Path(__file__).resolve().parents[2] / "envs" / "repo" / "Dockerfile.template"
DEPS_TEMPLATE = TEMPLATE.with_name("Dockerfile.deps")
_lock = threading.Lock()


def repo_slug(repo: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")
    return s[:60] or "repo"


def _download(reqs: list[str], dest: Path) -> None:
    """Wheels for `reqs` (and their dependencies) into `dest`, via the shared wheelhouse."""
    from minicoder.sandbox.local import wheelhouse

    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--only-binary=:all:",
            "--python-version", "3.11", "--find-links", str(wheelhouse())]
    proc = subprocess.run([*base, "-d", str(wheelhouse()), *reqs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"could not download wheels for {reqs} on the host: {proc.stderr.strip()[-400:]}")
    # the subset this image needs (pip resolves again, offline, against the wheelhouse only)
    proc = subprocess.run([*base, "--no-index", "-d", str(dest), *reqs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"could not collect wheels for {reqs}: {proc.stderr.strip()[-400:]}")


def ensure_deps_image(packages: list[str], base: str = DEFAULT_IMAGE, client=None, log=None) -> str:
    """The image with `packages` installed on `base` (built when missing). Returns its tag."""
    from minicoder.sandbox import images

    if client is None:
        from minicoder.sandbox.docker import client as docker_client

        client = docker_client()
    try:
        base_id = client.images.get(base).id
    except Exception as e:
        raise SandboxError(f"base image {base} is missing ({e}); run `make docker`") from e
    reqs = sorted(set(packages))
    tag = images.hashed_tag("minicoder/deps", DEPS_TEMPLATE, base_id, "\n".join(reqs))
    if images.image_exists(client, tag):
        return tag
    with _lock, tempfile.TemporaryDirectory(prefix="minicoder-deps-image-") as tmp:
        if images.image_exists(client, tag):
            return tag
        ctx = Path(tmp)
        (ctx / "wheels").mkdir()
        if reqs:
            _download(reqs, ctx / "wheels")
        (ctx / "wheels" / ".keep").write_text("")
        (ctx / "requirements.txt").write_text("".join(r + "\n" for r in reqs))
        (ctx / "Dockerfile").write_text(DEPS_TEMPLATE.read_text())
        try:
            return images.build_from_dockerfile(client, tag, context=ctx, buildargs={"BASE": base},
                                                labels={"minicoder.requirements": images.content_hash("\n".join(reqs))},
                                                network_mode="none", rebuild=True, log=log)
        except images.ImageBuildError as e:
            raise SandboxError(str(e)) from e


def ensure_repo_image(task: Task, client=None, rebuild: bool = False, log=None) -> str:
    """The per-repository image for `task` (built when missing). Returns its tag."""
    from minicoder.sandbox import images

    if client is None:
        from minicoder.sandbox.docker import client as docker_client

        client = docker_client()
    base = task.environment.image
    try:
        base_id = client.images.get(base).id
    except Exception as e:
        raise SandboxError(f"base image {base} is missing ({e}); run `make docker`") from e
    reqs = sorted(set(task.environment.python_packages))
    with _lock, tempfile.TemporaryDirectory(prefix="minicoder-repo-image-") as tmp:
        ctx = Path(tmp)
        materialize_repo(task, ctx / "repo")
        shutil.rmtree(ctx / "repo" / ".git")  # the image carries the tree; workspaces get a fresh git repo
        tag = images.hashed_tag(f"minicoder/env-{repo_slug(task.repo)}", TEMPLATE, base_id,
                                "\n".join(reqs), ctx / "repo")
        if not rebuild and images.image_exists(client, tag):
            return tag
        (ctx / "wheels").mkdir()
        if reqs:
            _download(reqs, ctx / "wheels")
        (ctx / "wheels" / ".keep").write_text("")
        (ctx / "requirements.txt").write_text("".join(r + "\n" for r in reqs))
        (ctx / "Dockerfile").write_text(TEMPLATE.read_text())
        try:
            return images.build_from_dockerfile(client, tag, context=ctx, buildargs={"BASE": base},
                                                labels={"minicoder.repo": task.repo}, network_mode="none",
                                                rebuild=True, log=log)
        except images.ImageBuildError as e:
            raise SandboxError(str(e)) from e
