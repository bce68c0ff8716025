"""A few hand-made Kafka frames, for sending what no well-behaved client would."""

import socket
import struct

import crc32c


def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request(api_key, version, body, correlation_id=1, client_id="wire-test"):
    """A v1 request header (non-flexible) followed by `body`, with its size prefix."""
    payload = struct.pack(">hhi", api_key, version, correlation_id) + string(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def varint(n):
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def record_batch(value, key=b"k", magic=2, corrupt_crc=False, timestamp=1_700_000_000_000, declared_records=1,
                 producer=(-1, -1, -1), attributes=0):
    """A one-record RecordBatch v2, as a client would encode it (its header may claim
    `declared_records` records instead, with a correct CRC), from an idempotent producer
    when `producer` gives its (id, epoch, base sequence), with the batch `attributes`."""
    record = (
        b"\x00"  # attributes
        + varint(0)  # timestamp delta
        + varint(0)  # offset delta
        + varint(len(key))
        + key
        + varint(len(value))
        + value
        + varint(0)  # headers
    )
    record = varint(len(record)) + record
    after_crc = (
        # attributes, last offset delta, timestamps, producer id/epoch, base sequence, record count
        struct.pack(">hiqqqhii", attributes, declared_records - 1, timestamp, timestamp, *producer, declared_records)
        + record
    )
    crc = crc32c.crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    body = struct.pack(">ibI", -1, magic, crc) + after_crc  # leader epoch, magic, crc
    return struct.pack(">qi", 0, len(body)) + body


def produce_v3(topic, partition, records, acks=1, transactional_id=None):
    body = (
        (string(transactional_id) if transactional_id is not None else struct.pack(">h", -1))
        + struct.pack(">hi", acks, 5000)
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">i", partition)
        + struct.pack(">i", len(records))
        + records
    )
    return request(0, 3, body)


def fetch_v4(topic, partition, offset, max_wait_ms=0, max_bytes=1 << 20, isolation=0):
    body = (
        struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, isolation)  # replica, wait, min, max bytes, isolation
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">iqi", partition, offset, max_bytes)
    )
    return request(1, 4, body)


def fetch_v4_partitions(topic, partitions, max_bytes, partition_max_bytes):
    """A Fetch v4 of several partitions of one topic, each from offset 0, in the given order."""
    body = struct.pack(">iiiib", -1, 0, 1, max_bytes, 0) + struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", len(partitions))
    for p in partitions:
        body += struct.pack(">iqi", p, 0, partition_max_bytes)
    return request(1, 4, body)


def parse_fetch_v4_partitions(body):
    """[(partition, error code, high watermark, record bytes)] of a one-topic Fetch v4 response
    body, in response order."""
    pos = 4  # throttle time
    (n_topics,) = struct.unpack_from(">i", body, pos)
    assert n_topics == 1
    pos += 4
    (name_len,) = struct.unpack_from(">h", body, pos)
    pos += 2 + name_len
    (n_parts,) = struct.unpack_from(">i", body, pos)
    pos += 4
    partitions = []
    for _ in range(n_parts):
        p, error, hw, _lso, n_aborted = struct.unpack_from(">ihqqi", body, pos)
        pos += 4 + 2 + 8 + 8 + 4 + max(n_aborted, 0) * 16
        (n,) = struct.unpack_from(">i", body, pos)
        pos += 4
        records = body[pos : pos + max(n, 0)]
        assert len(records) == max(n, 0), "whole records"
        pos += len(records)
        partitions.append((p, error, hw, records))
    assert pos == len(body), "records end the response"
    return partitions


def fetch_v4_aborted(body):
    """[(producer id, first offset)] of the aborted transactions in a one-partition Fetch v4
    response body."""
    pos = 4 + 4
    (name_len,) = struct.unpack_from(">h", body, pos)
    pos += 2 + name_len + 4
    _p, _error, _hw, _lso, n_aborted = struct.unpack_from(">ihqqi", body, pos)
    pos += 4 + 2 + 8 + 8 + 4
    return [struct.unpack_from(">qq", body, pos + 16 * i) for i in range(max(n_aborted, 0))]


def control_batches(records):
    """How many of the record batches in `records` (whole v2 batches) are control batches."""
    pos, n = 0, 0
    while pos + 23 <= len(records):
        (length,) = struct.unpack_from(">i", records, pos + 8)
        (attributes,) = struct.unpack_from(">h", records, pos + 21)
        n += bool(attributes & 0x20)
        pos += 12 + length
    return n


def parse_fetch_v4_sizes(body):
    """{partition: record bytes} of a one-topic Fetch v4 response body."""
    return {p: len(records) for p, _, _, records in parse_fetch_v4_partitions(body)}


def parse_fetch_v4(body):
    """(error code, high watermark, record bytes) of a one-partition Fetch v4 response body."""
    partitions = parse_fetch_v4_partitions(body)
    assert len(partitions) == 1
    _, error, hw, records = partitions[0]
    return error, hw, records


def connect(bootstrap):
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def roundtrip(sock, frame):
    """Sends a frame and returns the response body after the correlation id."""
    sock.sendall(frame)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    data = recv_exact(sock, size)
    return data[4:]


def closed_by_peer(sock):
    """True if the broker closed the connection (EOF or reset) within the socket timeout."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def single_partition_error(resp, after_partition_header=0):
    """Error code of the single partition in a Produce v3 or Fetch v4 response body."""
    pos = 0
    if after_partition_header:  # fetch: throttle time first
        pos += 4
    n_topics = struct.unpack_from(">i", resp, pos)[0]
    assert n_topics == 1
    pos += 4
    name_len = struct.unpack_from(">h", resp, pos)[0]
    pos += 2 + name_len
    n_parts = struct.unpack_from(">i", resp, pos)[0]
    assert n_parts == 1
    pos += 4
    partition, error = struct.unpack_from(">ih", resp, pos)
    return error


def nullable_string(s):
    return struct.pack(">h", -1) if s is None else string(s)


def incremental_alter_configs_v0(resource_type, resource_name, configs):
    """IncrementalAlterConfigs v0 for one resource; `configs` is [(name, op, value)]. Clients'
    admin APIs refuse the BROKER resource "" (the cluster-wide defaults): this does not."""
    body = struct.pack(">i", 1) + struct.pack(">b", resource_type) + string(resource_name)
    body += struct.pack(">i", len(configs))
    for name, op, value in configs:
        body += string(name) + struct.pack(">b", op) + nullable_string(value)
    return request(44, 0, body + b"\x00")


def parse_incremental_alter_configs_v0(resp):
    """(error code, message) of the single resource in the response."""
    r = Reader(resp)
    r.take(">i")  # throttle
    assert r.take(">i") == 1
    return r.take(">h"), r.string()


def single_partition_offset(resp):
    """(error code, base offset) of the single partition in a Produce v3 response body."""
    r = Reader(resp)
    assert r.take(">i") == 1
    r.string()
    assert r.take(">i") == 1
    r.take(">i")
    return r.take(">h"), r.take(">q")


class Reader:
    """Reads big-endian fields of a non-flexible response body in order."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


def metadata_v1(sock, topic):
    """Metadata v1 for one topic from the broker at the other end of `sock`:
    {partition: (leader, replicas, isr)}."""
    body = struct.pack(">i", 1) + string(topic)
    r = Reader(roundtrip(sock, request(3, 1, body)))
    r.array(lambda: (r.take(">i"), r.string(), r.take(">i"), r.string()))  # brokers
    r.take(">i")  # controller
    parts = {}

    def partition():
        r.take(">h")
        p, leader = r.take(">i"), r.take(">i")
        replicas = r.array(lambda: r.take(">i"))
        isr = r.array(lambda: r.take(">i"))
        parts[p] = (leader, replicas, isr)

    def topic_entry():
        r.take(">h"), r.string(), r.take(">b")
        r.array(partition)

    r.array(topic_entry)
    return parts
