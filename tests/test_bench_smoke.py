"""A seconds-long smoke run of tern-bench, to keep it working (benchmarks are not tests)."""

import json
import os
import subprocess
import time

from conftest import TERN_BIN

BENCH_BIN = os.path.join(os.path.dirname(TERN_BIN), "tern-bench")


def test_tern_bench_produces_and_consumes(broker, tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run(
        # About 1.5 s of records at this rate: the run ends partway through a second.
        [BENCH_BIN, "--brokers", broker.bootstrap, "--workload", "both", "--topic", "bench-smoke", "--partitions", "3",
         "--warmup", "1", "--duration", "10", "--records", "15000", "--mb-rate", "5", "--record-size", "512",
         "--json", str(out)],
        check=True, capture_output=True, timeout=60,
    )
    s = json.loads(out.read_text())
    assert s["errors"] == 0
    assert s["produced_records_per_sec"] > 0 and s["consumed_records_per_sec"] > 0
    assert s["produce_latency"]["count"] > 0 and s["end_to_end_latency"]["count"] > 0
    # Each acknowledged record's latency is counted once, whichever second it fell in (the
    # last, partial one too).
    assert s["produce_latency"]["count"] == round(s["produced_records_per_sec"] * s["seconds"])
    # The progress lines give each second's produce and end-to-end latency.
    progress = [line for line in done.stderr.decode().splitlines() if line.startswith("[")]
    assert progress and all(line.count("(p99 ") == 2 for line in progress), progress


def established_to(port):
    """Established TCP connections to `port` on this host (clients' ends and the broker's)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01":
                    count += 1
    return count


def test_tern_bench_opens_the_connections_it_is_asked_for(fresh_broker, tmp_path):
    # Two shards, so the connections also spread over both (SO_REUSEPORT).
    broker = fresh_broker("--cores", "2")
    out = tmp_path / "summary.json"
    bench = subprocess.Popen(
        [BENCH_BIN, "--brokers", broker.bootstrap, "--workload", "both", "--topic", "bench-connections",
         "--partitions", "4", "--producers", "2", "--consumers", "1", "--connections", "3", "--warmup", "1",
         "--duration", "3", "--mb-rate", "5", "--record-size", "512", "--json", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    most = 0
    while bench.poll() is None:
        most = max(most, established_to(broker.port))
        time.sleep(0.1)
    assert bench.returncode == 0, bench.stderr.read().decode()
    # 2 producers x 3 connections, and 1 consumer whose 4 partitions are dealt to 3 connections.
    assert most == 9
    s = json.loads(out.read_text())
    assert s["errors"] == 0
    assert s["produced_records_per_sec"] > 0 and s["consumed_records_per_sec"] > 0
    assert s["produce_latency"]["count"] > 0 and s["end_to_end_latency"]["count"] > 0
