"""`star-jax embed` in a separate process that SIGKILLs itself midway, for tests/test_embed.py.

    python tests/embed_worker.py --kill-after-writes K -- embed --data ... --version V ...

After the K-th block handed to the store writer, the process kills itself with SIGKILL, the way a
preempted job dies: the writer may have shard writes still in flight and nothing is cleaned up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kill-after-writes", type=int, required=True)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args()

    from star_jax import cli
    from star_jax.store import EmbeddingWriter

    write, calls = EmbeddingWriter.write, [0]

    def write_then_die(self, node_type, rows, vectors):
        write(self, node_type, rows, vectors)
        calls[0] += 1
        if calls[0] == args.kill_after_writes:
            os.kill(os.getpid(), signal.SIGKILL)

    EmbeddingWriter.write = write_then_die
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
