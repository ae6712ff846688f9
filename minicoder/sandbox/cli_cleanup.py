"""`minicoder cleanup`: remove what sandboxes left behind after a crash or a kill -9.

Removes every Docker container labelled `minicoder=1` (or, with `--dead-only`, only sandbox
containers whose owning process is gone), and local sandbox folders whose owning process is gone.
Without a Docker engine it cleans the local side and says so.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cleanup", help="remove leftover sandbox containers and folders",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--dead-only", action="store_true",
                   help="only containers whose owning process is dead (safe while other runs are going)")
    p.set_defaults(func=run)


def run(args) -> int:
    from minicoder.sandbox.base import SandboxError
    from minicoder.sandbox.host import reap_stale_roots

    roots = reap_stale_roots()
    print(f"local: removed {roots} stale sandbox folder(s)")
    try:
        from minicoder.sandbox.docker import cleanup, client

        n = cleanup(client(), dead_only=args.dead_only)
        print(f"docker: removed {n} container(s)" + (" of dead owners" if args.dead_only else " labelled minicoder=1"))
    except SandboxError as e:
        print(f"docker: skipped ({e})")
    return 0
