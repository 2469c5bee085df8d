"""Many shards (a script, not a timed test): what a score folder of N shards costs to claim, to check on
resume, to finish (manifest) and to read back, per shard, on a local disk and, with ``--s3``, on a real
S3 API server on loopback (moto, in its own process). Each step is timed with ``IO_THREADS`` threads as
shipped (``--threads`` to override, e.g. 1 vs 16 side by side).

    .venv/bin/python -m tests.bench.bench_shards [--shards 10000] [--rows 100] [--s3] [--threads N]

What each step verifies: claim reads every shard's Parquet footer (fingerprint, rows); the resume check
reads every shard once and verifies its content against the checksum in its footer; finish reads the
footers again and writes the manifest; readers (``analyze``) verify each shard's checksum as they read it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from glmscore.pipelines import shards, store


def loopback_s3() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process (so its work does not share this process's GIL), one bucket."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the moto S3 server did not start") from None
            time.sleep(0.2)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "not-a-secret-0123456789", "AWS_REGION": "us-east-1"})
    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir("bench-shards")
    return server, "s3://bench-shards/out"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100, help="rows per shard")
    ap.add_argument("--s3", action="store_true", help="a loopback S3 server instead of a local folder")
    ap.add_argument("--threads", type=int, default=None, help="override IO_THREADS (object storage only)")
    args = ap.parse_args()
    if args.threads:
        shards.IO_THREADS = args.threads
    server, tmp = None, tempfile.mkdtemp(prefix="bench_shards")
    out = Path(tmp) / "out"
    try:
        if args.s3:
            server, out = loopback_s3()
        n, rows, rng = args.shards, args.rows, np.random.default_rng(0)
        units = [SimpleNamespace(dataset=f"d{i // 100}", group="g", chunk=i % 100, crc=i, n_rows=rows) for i in range(n)]
        folder = shards.OutputFolder(out)
        folder.create()
        folder.claim("fp", {}, False, units)
        t = time.perf_counter()
        for u in units:
            table = pa.table({"model": ["m"] * rows, "score": rng.normal(size=rows), "pair_index": np.arange(rows)})
            folder.write(u, table, {"fingerprint": "fp", "crc": u.crc, "rows": rows})
        print(f"{n:,} shards of {rows} rows in {'a loopback S3' if args.s3 else 'a local folder'} "
              f"({shards.io_threads(out)} thread(s)); written in {time.perf_counter() - t:.1f} s\n")
        print("| step | seconds | ms per shard |\n|---|---|---|")

        def timed(name, step):
            t = time.perf_counter()
            result = step()
            took = time.perf_counter() - t
            print(f"| {name} | {took:.2f} | {took / n * 1e3:.2f} |", flush=True)
            return result

        timed("list the folder", lambda: store.files(out, "part-*.parquet"))
        timed("claim (a rerun: every footer)", lambda: folder.claim("fp", {}, False, units))
        assert not timed("resume check (every shard read, checksum verified)", lambda: folder.pending(units, "fp", {}))
        timed("finish (footers, manifest written)", lambda: folder.finish(
            units, "fp", revisions=set(), computed=0, config={}, card={"id": "bench"}, started="", provenance={}, warnings=[]))
        timed("read the manifest", lambda: shards.read_manifest(out))
        timed("read back, by dataset (2 columns)", lambda: sum(len(f) for _, f in shards.read_datasets(out, ["model", "score"])))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
