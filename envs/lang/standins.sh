#!/bin/sh
# Install empty Debian packages named NAME... (each only if missing), for dependencies that Debian
# bookworm declares but does not ship. Today one: `jest` depends on node-types-node (@types/node:
# TypeScript declarations, never loaded at run time), which no bookworm package provides, so
# `apt-get install jest` is otherwise unsatisfiable. The stand-in holds no files.
# Used by envs/lang/Dockerfile (the node image) and scripts/setup.sh (the host, for the local backend).
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for name in "$@"; do
  dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" && continue
  mkdir -p "$dir/$name/DEBIAN"
  printf 'Package: %s\nVersion: 0.0.0-minicoder\nArchitecture: all\nMaintainer: minicoder <minicoder@localhost>\nDescription: empty stand-in for a dependency Debian bookworm does not ship\n' \
    "$name" > "$dir/$name/DEBIAN/control"
  dpkg-deb --build "$dir/$name" "$dir/$name.deb" >/dev/null
  dpkg -i "$dir/$name.deb" >/dev/null
done
