"""A seconds-long smoke run of tern-bench, to keep it working (benchmarks are not tests)."""

import json
import os
import subprocess

from conftest import TERN_BIN

BENCH_BIN = os.path.join(os.path.dirname(TERN_BIN), "tern-bench")


def test_tern_bench_produces_and_consumes(broker, tmp_path):
    out = tmp_path / "summary.json"
    subprocess.run(
        [BENCH_BIN, "--brokers", broker.bootstrap, "--workload", "both", "--topic", "bench-smoke", "--partitions", "3",
         "--warmup", "1", "--duration", "2", "--mb-rate", "5", "--record-size", "512", "--json", str(out)],
        check=True, capture_output=True, timeout=60,
    )
    s = json.loads(out.read_text())
    assert s["errors"] == 0
    assert s["produced_records_per_sec"] > 0 and s["consumed_records_per_sec"] > 0
    assert s["produce_latency"]["count"] > 0 and s["end_to_end_latency"]["count"] > 0
