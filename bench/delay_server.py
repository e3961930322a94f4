"""A local TCP server that answers each line `<seconds>` with `ok` that many seconds later:
the I/O the slots benchmark's jobs wait on (a real socket, not asyncio.sleep).

    python -m bench.delay_server --port N
"""

from __future__ import annotations

import argparse
import asyncio
import resource


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        await asyncio.sleep(float(line.strip() or 0))
        writer.write(b"ok\n")
        await writer.drain()
    except (OSError, ValueError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve_one, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a connection per waiting job
    asyncio.run(_main(args.port))


if __name__ == "__main__":
    main()
