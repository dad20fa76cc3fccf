"""``python -m tests.topology [--pool-size N] [--no-replica] -- COMMAND ...``

Starts the topology of the tests (a private primary, its streaming replica and a
PgBouncer in transaction mode in front of the primary, on 127.0.0.1 and free
ports), creates a database ``scaleout`` on it, runs COMMAND with the URLs in
``ASYNC_ORM_BOUNCER_URL``, ``ASYNC_ORM_PRIMARY_URL`` and ``ASYNC_ORM_REPLICA_URL``,
then stops every server it started and exits with COMMAND's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tests.topology._servers import Topology, missing_binaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.topology", description=__doc__)
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer default_pool_size")
    parser.add_argument("--no-replica", action="store_true", help="no streaming replica")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    reason = missing_binaries()
    if reason is not None:
        print(f"cannot start the topology: {reason}", file=sys.stderr)
        return 2
    topology = Topology.start(replica=not args.no_replica, pool_size=args.pool_size)
    try:
        topology.create_database("scaleout")
        env = dict(os.environ)
        env["ASYNC_ORM_BOUNCER_URL"] = topology.bouncer.url("scaleout")
        env["ASYNC_ORM_PRIMARY_URL"] = topology.primary.url("scaleout")
        if topology.replica is not None:
            env["ASYNC_ORM_REPLICA_URL"] = topology.replica.url("scaleout")
        return subprocess.call(command, env=env)
    finally:
        topology.stop()


if __name__ == "__main__":
    sys.exit(main())
