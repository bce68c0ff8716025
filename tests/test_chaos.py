"""A short fault-injection run (scripts/chaos runs the long one): at least 30 faults against
a 3-node cluster under an idempotent acks=all workload, with no anomaly in the history."""

from chaos import iptables_works, run
from conftest import TERN_BIN


def test_thirty_faults_lose_duplicate_and_move_nothing(workdir):
    result = run(30, workdir, TERN_BIN, seed=17)
    assert sum(result["faults"].values()) == 30
    if iptables_works():
        assert result["faults"]["cut"] > 0 and result["faults"]["split"] > 0, result
    assert result["acknowledged"] > 0
    assert result["anomalies"] == {k: 0 for k in result["anomalies"]}, result
