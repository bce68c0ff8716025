"""Fault injection against a local 3-node cluster, with a checker for Jepsen's Kafka anomalies.

A workload runs throughout: an idempotent producer (acks=all) writing unique values to a
replicated topic, and a consumer reading it live. Meanwhile faults hit random nodes, one at a
time: SIGKILL then restart, SIGSTOP then SIGCONT (longer than an election timeout), a node cut
off (iptables drops every packet of its internal RPC listener, so it hears no other node), and a
split link (two nodes cannot reach each other while both reach the third: Jepsen's bridge, the
partition that tests pre-vote and check-quorum; node I's RPC runs on 127.0.0.I and dials from
there, so rules on addresses cut one link). The network faults are skipped, and said so, where
iptables cannot be used. Each fault holds longer than an election timeout. Then everything heals, the whole
topic is read back, and the history is checked:

- lost write: an acknowledged value is not in the log;
- duplicate: a value is in the log twice;
- inconsistent offset: a value acknowledged at one offset is at another (or in another
  partition);
- non-monotonic or skipping read: the live consumer's reads of a partition are not the log's
  records in order, consecutive;
- read of uncommitted data: the live consumer read a record that is not in the final log at
  that offset (it was truncated later).

Beside it, a transactional producer runs transactions over the partitions of a second topic
(committing, and aborting every fifth), starting a new instance when one is fenced or fails
fatally; a read_committed reader of that topic must then see every committed transaction
whole and once, no aborted one, and each transaction whose outcome the client never learned
whole or not at all:

- lost transaction, visible abort, partial transaction, duplicate (transactional) record.

Used by tests/test_chaos.py (a short run in CI) and by scripts/chaos (the soak).
"""

import argparse
import glob
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cluster")
PARTITIONS = 3


def iptables_works():
    if shutil.which("iptables") is None:
        return False
    probe = ["-p", "tcp", "--dport", "1", "-j", "DROP"]
    if subprocess.run(["iptables", "-A", "INPUT", *probe], capture_output=True).returncode != 0:
        return False
    subprocess.run(["iptables", "-D", "INPUT", *probe], capture_output=True)
    return True


class Cluster:
    def __init__(self, workdir, tern_bin, nodes=3):
        self.n = nodes
        self.dir = os.path.join(workdir, f"chaos-{random.randrange(1 << 30):x}")
        while True:
            self.port = random.randrange(20000, 40000)
            if all(self._free(p) for i in range(nodes) for p in (self.port + i, self.port + 100 + i)):
                break
        self.env = dict(os.environ, TERN_CLUSTER_DIR=self.dir, TERN_CLUSTER_PORT=str(self.port), TERN_BIN=tern_bin)
        self.cut = {}  # what is cut (a node, or a pair of nodes) -> its iptables rules

    @staticmethod
    def _free(port):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    def run(self, *args):
        out = subprocess.run([SCRIPT, *map(str, args)], env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/cluster {args}: {out.stdout}{out.stderr}")
        return out.stdout

    def rpc_port(self, node):
        return self.port + 100 + node - 1

    def _rules(self, node):
        port = str(self.rpc_port(node))
        return [["-p", "tcp", "--dport", port, "-j", "DROP"], ["-p", "tcp", "--sport", port, "-j", "DROP"]]

    def _link_rules(self, a, b):
        # Both ways of both connections (a dials b's RPC port, b dials a's), by this cluster's
        # ports so that other clusters on the same addresses are not cut.
        rules = []
        for x, y in ((a, b), (b, a)):
            port = str(self.rpc_port(y))
            rules.append(["-s", f"127.0.0.{x}", "-d", f"127.0.0.{y}", "-p", "tcp", "--dport", port, "-j", "DROP"])
            rules.append(["-s", f"127.0.0.{y}", "-d", f"127.0.0.{x}", "-p", "tcp", "--sport", port, "-j", "DROP"])
        return rules

    def _apply(self, key, rules):
        for rule in rules:
            subprocess.run(["iptables", "-A", "INPUT", *rule], check=True)
        self.cut[key] = rules

    def cut_off(self, node):
        self._apply(node, self._rules(node))

    def split(self, a, b):
        """Cuts the link between nodes a and b, both ways; each still reaches the others."""
        self._apply((a, b), self._link_rules(a, b))

    def heal(self, key):
        for rule in self.cut.pop(key, []):
            subprocess.run(["iptables", "-D", "INPUT", *rule], capture_output=True)

    def heal_all(self):
        for key in list(self.cut):
            self.heal(key)


class Workload:
    """The producer and the live consumer, each on its own thread."""

    def __init__(self, bootstrap, topic, rate=400, client_debug=None):
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.client_debug = client_debug
        self.acked = {}  # value -> (partition, offset)
        self.failed = []
        self.reads = {p: [] for p in range(PARTITIONS)}  # partition -> [(offset, value)]
        self.sent = 0
        self.stop = threading.Event()
        self.producing = threading.Event()
        self.producing.set()
        self.threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def start(self):
        for t in self.threads:
            t.start()

    def _produce(self):
        config = {
            "bootstrap.servers": self.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 300000,
        }
        if self.client_debug:
            config["debug"] = self.client_debug  # librdkafka's own log, on stderr
        p = Producer(config)

        def delivered(err, m):
            if err:
                self.failed.append((m.value(), str(err)))
            else:
                self.acked[m.value()] = (m.partition(), m.offset())

        while self.producing.is_set():
            value = b"v%d" % self.sent
            p.produce(self.topic, value=value, partition=self.sent % PARTITIONS, on_delivery=delivered)
            self.sent += 1
            p.poll(0)
            time.sleep(1 / self.rate)
        p.flush(300)

    def _consume(self):
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": "chaos-live",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        c.assign([TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)])
        while not self.stop.is_set():
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            self.reads[m.partition()].append((m.offset(), m.value()))
        c.close()

    def finish(self):
        self.producing.clear()
        self.threads[0].join()
        # The live consumer catches up with everything acknowledged, then stops.
        deadline = time.time() + 120
        while time.time() < deadline:
            read = {v for rs in self.reads.values() for (_, v) in rs}
            if all(v in read for v in self.acked):
                break
            time.sleep(0.5)
        self.stop.set()
        # Bounded: once, after 1,000 faults, the live consumer's close() hung in librdkafka
        # (rd_kafka_consumer_close waiting for its group handler) while the cluster served a
        # new consumer of the same group at once; its reads are taken all the same.
        self.threads[1].join(60)


class Transactions:
    """Transactions of `size` records over the partitions of `topic`, one at a time, on their
    own thread; each ends committed, aborted, or unknown (the client could not tell)."""

    def __init__(self, bootstrap, topic, size=6):
        self.bootstrap, self.topic, self.size = bootstrap, topic, size
        self.committed, self.aborted, self.unknown = [], [], []  # lists of value lists
        self.instances = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def _producer(self):
        self.instances += 1
        while not self.stop.is_set():
            p = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": self.topic + "-txn",
                          "linger.ms": 5, "transaction.timeout.ms": 60000, "message.timeout.ms": 60000})
            try:
                p.init_transactions(60)
                return p
            except KafkaException:
                time.sleep(0.5)  # its coordinator is moving: a new instance tries again
        return None

    def _end(self, p, values, abort):
        """Ends the open transaction; returns whether the producer is still usable."""
        try:
            while True:
                try:
                    if abort:
                        p.abort_transaction(60)
                        self.aborted.append(values)
                    else:
                        p.commit_transaction(60)
                        self.committed.append(values)
                    return True
                except KafkaException as e:
                    if e.args[0].retriable():
                        continue
                    if e.args[0].txn_requires_abort() and not abort:
                        # Committing failed before the outcome was decided: abort instead.
                        abort = True
                        continue
                    raise
        except KafkaException:
            self.unknown.append(values)
            return False

    def _run(self):
        p = self._producer()
        n = 0
        while p is not None and not self.stop.is_set():
            values = [b"t%d-%d" % (n, i) for i in range(self.size)]
            try:
                p.begin_transaction()
                for i, v in enumerate(values):
                    p.produce(self.topic, value=v, partition=i % PARTITIONS)
                    p.poll(0)
            except (KafkaException, BufferError):
                self.unknown.append(values)
                p = self._producer()
                n += 1
                continue
            usable = self._end(p, values, abort=n % 5 == 4)
            n += 1
            if not usable:
                p = self._producer()
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join(300)


def check_transactions(txns, log):
    """The anomalies of the transactions against what a read_committed reader reads."""
    anomalies = {"lost transaction": [], "visible abort": [], "partial transaction": [],
                 "duplicate transactional record": []}
    seen = {}
    for p, records in log.items():
        for (offset, value) in records:
            if value in seen:
                anomalies["duplicate transactional record"].append((value, seen[value], (p, offset)))
            seen[value] = (p, offset)
    for values in txns.committed:
        if not all(v in seen for v in values):
            anomalies["lost transaction"].append(values[0])
    for values in txns.aborted:
        if any(v in seen for v in values):
            anomalies["visible abort"].append(values[0])
    for values in txns.unknown:
        if 0 < sum(v in seen for v in values) < len(values):
            anomalies["partial transaction"].append(values[0])
    return anomalies


def read_log(bootstrap, topic, isolation="read_uncommitted"):
    """Every record of the topic: partition -> [(offset, value)]. Reads until nothing more comes
    for a while (the ends of partitions may be control batches, which consumers skip)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-final", "enable.auto.commit": False,
                  "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    log = {p: {} for p in range(PARTITIONS)}
    quiet_until = time.time() + 10
    deadline = time.time() + 300
    while time.time() < min(quiet_until, deadline):
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        # A reader sent back by a leader change may read some offsets again.
        previous = log[m.partition()].setdefault(m.offset(), m.value())
        if previous != m.value():
            raise AssertionError(f"offset {m.offset()} of partition {m.partition()} read as {previous!r} and {m.value()!r}")
        quiet_until = time.time() + 5
    c.close()
    return {p: sorted(records.items()) for p, records in log.items()}


def batch_headers(data_dir, topic, partition, offsets):
    """Header fields of the stored batches holding any of `offsets`, in one node's data dir:
    what tells a broker's lost dedup (same producer epoch and sequences twice) from a client's
    renumbering (a new epoch)."""
    found = []
    for path in sorted(glob.glob(os.path.join(data_dir, f"{topic}-{partition}", "*.log"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 61 <= len(data):
            (base, length, epoch, _magic, _crc, attrs, delta, _ts, _max_ts, pid, pepoch, seq,
             count) = struct.unpack_from(">qiibIhiqqqhii", data, pos)
            if length <= 0:
                break
            if any(base <= o <= base + delta for o in offsets):
                found.append({"offsets": (base, base + delta), "leader_epoch": epoch, "control": bool(attrs & 0x20),
                              "producer": (pid, pepoch), "sequences": (seq, seq + delta), "records": count})
            pos += 12 + length
    return found


def check(workload, log):
    """The anomalies found, by kind."""
    anomalies = {"lost": [], "duplicate": [], "inconsistent offset": [], "non-monotonic or skipping read": [], "uncommitted read": []}
    at = {}
    for p, records in log.items():
        for (offset, value) in records:
            # A value at two places is stored twice; the same place read twice is not.
            if value in at and at[value] != (p, offset):
                anomalies["duplicate"].append((value, at[value], (p, offset)))
            at[value] = (p, offset)
    for value, (partition, offset) in workload.acked.items():
        # librdkafka may acknowledge without an offset (None) when it learned of the write
        # without the broker's answer to it (an idempotent retry after a lost answer): then
        # only the partition can be checked.
        if value not in at:
            anomalies["lost"].append(value)
        elif at[value][0] != partition or offset is not None and at[value][1] != offset:
            anomalies["inconsistent offset"].append((value, (partition, offset), at[value]))
    for p, reads in workload.reads.items():
        index = {offset: i for i, (offset, _) in enumerate(log[p])}
        previous = None
        for (offset, value) in reads:
            i = index.get(offset)
            if i is None or log[p][i][1] != value:
                anomalies["uncommitted read"].append((p, offset, value))
                continue
            if previous is not None and i != previous + 1:
                anomalies["non-monotonic or skipping read"].append((p, log[p][previous][0], offset))
            previous = i
    return anomalies


def run(faults, workdir, tern_bin, seed=None, log=print, client_debug=None):
    rng = random.Random(seed)
    cluster = Cluster(workdir, tern_bin)
    kinds = ["kill", "pause"] + (["cut", "split"] if iptables_works() else [])
    if "cut" not in kinds:
        log("iptables is not usable here: network faults skipped")
    bootstrap = cluster.run("start", cluster.n).strip().splitlines()[-1]
    counts = {k: 0 for k in kinds}
    workload = txns = None
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topic = f"chaos-{rng.randrange(1 << 30):x}"
        txn_topic = topic + "-txn"
        created = admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=3)
                                       for t in (topic, txn_topic)])
        for f in created.values():
            f.result(60)
        time.sleep(2)
        workload = Workload(bootstrap, topic, client_debug=client_debug)
        workload.start()
        txns = Transactions(bootstrap, txn_topic)
        txns.start()
        for i in range(faults):
            time.sleep(rng.uniform(0.3, 1.0))
            node = rng.randrange(1, cluster.n + 1)
            kind = rng.choice(kinds)
            counts[kind] += 1
            hold = rng.uniform(1.5, 3.0)  # longer than an election timeout (0.5-1 s)
            if kind == "kill":
                cluster.run("kill", node)
                time.sleep(rng.uniform(0.2, 1.0))
                cluster.run("restart", node)
            elif kind == "pause":
                cluster.run("pause", node)
                time.sleep(hold)
                cluster.run("resume", node)
            elif kind == "cut":
                cluster.cut_off(node)
                time.sleep(hold)
                cluster.heal(node)
            else:
                other = rng.choice([n for n in range(1, cluster.n + 1) if n != node])
                cluster.split(node, other)
                time.sleep(hold)
                cluster.heal((node, other))
            if (i + 1) % 50 == 0:
                log(f"{i + 1} faults, {len(workload.acked)} acknowledged")
        cluster.heal_all()
        workload.finish()
        txns.finish()
        final = read_log(bootstrap, topic)
        anomalies = check(workload, final)
        anomalies.update(check_transactions(txns, read_log(bootstrap, txn_topic, "read_committed")))
        return {
            "faults": counts,
            "sent": workload.sent,
            "acknowledged": len(workload.acked),
            "failed": len(workload.failed),
            "read live": sum(len(r) for r in workload.reads.values()),
            "transactions": {"committed": len(txns.committed), "aborted": len(txns.aborted),
                             "unknown": len(txns.unknown), "producer instances": txns.instances},
            "anomalies": {k: len(v) for k, v in anomalies.items()},
            "examples": {k: v[:5] for k, v in anomalies.items() if v},
            "logs": cluster.dir,
            "topic": topic,
        }
    finally:
        if workload is not None:
            workload.producing.clear()
            workload.stop.set()
        if txns is not None:
            txns.stop.set()
        cluster.heal_all()
        try:
            cluster.run("stop")
        except Exception as e:  # noqa: BLE001 - report, the result matters more
            log(f"stopping the cluster: {e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's data and logs")
    args = parser.parse_args()
    tern_bin = os.environ.get("TERN_BIN", os.path.join(ROOT, "target", "release", "tern"))
    workdir = tempfile.mkdtemp(prefix="tern-chaos-")
    result = run(args.faults, workdir, tern_bin, seed=args.seed)
    for k, v in result.items():
        print(f"{k}: {v}")
    bad = sum(result["anomalies"].values())
    if not args.keep and bad == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
