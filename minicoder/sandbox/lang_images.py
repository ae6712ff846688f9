"""Docker images for the non-Python languages: the base task image + a Debian toolchain, one per language.

    language_image(client, "go")        # -> "minicoder/go:1.19", built when missing or out of date
    minicoder images languages          # what `make docker` runs (the three, in parallel)

Each image is `envs/lang/Dockerfile` built FROM the base image (`minicoder/python:3.11`, see
images.py) with one apt-get step installing `PACKAGES` (table below) from Debian bookworm. The
image carries a `minicoder.recipe` label: the hash of envs/lang/, the package list and the base
image's id, so it is rebuilt exactly when one of them changed (a rebuilt base image rebuilds the
language images on their next use), and a no-op otherwise. The Docker backend calls
`ensure_for_task` when a task's image is one of these, so the first task of a language builds it.

The build needs the Debian mirror (apt-get), not an image registry. `verify` runs the toolchain as
the sandbox user with no network, as task containers run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from minicoder.sandbox import images
from minicoder.sandbox.languages import LANGUAGES

RECIPE_DIR = images.ENVS_DIR / "lang"
# language -> (Debian packages, a command that must succeed in the image)
PACKAGES: dict[str, tuple[str, list[str]]] = {
    "javascript": ("nodejs node-tape mocha jest",
                   ["sh", "-c", "node --version && NODE_PATH=/usr/share/nodejs node -e "
                                "\"require('tape'); require('node:test'); require('mocha'); require('jest-cli')\" "
                                "&& mocha --version && jest --version"]),
    "go": ("golang-go", ["sh", "-c", "go version && go env GOROOT"]),
    "rust": ("cargo", ["sh", "-c", "cargo --version && rustc --version && cc --version | head -1"]),
}
# empty stand-ins installed first (envs/lang/standins.sh): bookworm's jest needs node-types-node
STANDINS: dict[str, str] = {"javascript": "node-types-node"}
_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in PACKAGES}


def recipe(client, language: str) -> str:
    base_id = client.images.get(images.DEFAULT_IMAGE).id
    return images.content_hash(RECIPE_DIR, PACKAGES[language][0], STANDINS.get(language, ""), base_id)


def verify(client, language: str, tag: str | None = None) -> str:
    """Run the language's check in its image (sandbox user, no network); returns its output."""
    tag = tag or LANGUAGES[language].image
    code, out = images.run_probe(client, tag, PACKAGES[language][1], labels={"minicoder.role": "verify"})
    if code != 0:
        raise images.ImageBuildError(f"{tag} failed its check (exit {code}):\n{out[-1500:]}")
    return out.strip()


def language_image(client, language: str, rebuild: bool = False, log: images.Log = images._print) -> str:
    """Make sure the image of `language` exists and matches its recipe (building the base first)."""
    if language not in PACKAGES:
        raise ValueError(f"no image recipe for language {language!r}; known: {sorted(PACKAGES)}")
    images.base_image(client, log=log)
    tag = LANGUAGES[language].image
    with _locks[language]:
        want = recipe(client, language)
        if not rebuild and images.image_exists(client, tag) and images.image_labels(client, tag).get(
                images.RECIPE_LABEL) == want:
            return tag
        old = client.images.get(tag).id if images.image_exists(client, tag) else None
        log(f"building {tag} FROM {images.DEFAULT_IMAGE} + Debian {PACKAGES[language][0]} (envs/lang/Dockerfile)")
        t0 = time.perf_counter()
        images.build_from_dockerfile(client, tag, context=RECIPE_DIR, buildargs={"BASE": images.DEFAULT_IMAGE,
                                     "PACKAGES": PACKAGES[language][0], "STANDINS": STANDINS.get(language, "")},
                                     labels={images.RECIPE_LABEL: want, "minicoder.language": language}, rebuild=True)
        log(f"built {tag} in {time.perf_counter() - t0:.1f}s; checking it")
        verify(client, language, tag)
        if old is not None and old != client.images.get(tag).id:
            try:
                client.images.remove(old)
            except Exception as e:  # still used by a container or another image: keep it
                log(f"kept the superseded image {old[:19]} ({e})")
        return tag


def ensure_for_task(task) -> str:
    """The task's image, built first when it is one of the language images (the docker backend's hook)."""
    image = task.environment.image
    for name, row in LANGUAGES.items():
        if name in PACKAGES and image == row.image:
            from minicoder.sandbox.docker import client

            return language_image(client(), name)
    return image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="minicoder images languages",
                                 description="Build the JavaScript, Go and Rust task images (Debian toolchains).")
    ap.add_argument("languages", nargs="*", default=["all"], help=f"'all' or some of {', '.join(PACKAGES)}")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    names = list(PACKAGES) if args.languages in (["all"], []) else args.languages
    bad = sorted(set(names) - set(PACKAGES))
    if bad:
        ap.error(f"unknown language(s) {bad}; choose from {', '.join(PACKAGES)}")
    t0 = time.perf_counter()
    try:
        client = images.ensure_engine()
        images.base_image(client)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            tags = list(pool.map(lambda n: language_image(client, n, rebuild=args.rebuild), names))
        for name, tag in zip(names, tags):
            img = client.images.get(tag)
            print(f"{tag}: {img.short_id}, {img.attrs['Size'] / 2**20:.0f} MiB; "
                  + " / ".join(verify(client, name).splitlines()[:2]))
    except (images.DockerUnavailable, images.ImageBuildError, ValueError) as e:
        print(f"lang_images: error: {e}", file=sys.stderr)
        return 1
    print(f"language images ready in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
