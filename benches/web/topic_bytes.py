"""Bytes a benchmark wrote to a Kafka topic: what one request costs the log.

  topic_bytes.py mark TOPIC > mark.json       the topic's end offsets now, per partition
  topic_bytes.py since TOPIC mark.json        reads every record written since the mark and
                                              prints one line:
      records=N bytes=B key=K value=V headers=H per_record=R

Bytes are the record's own: key + value + every header's name and value, as a consumer gets
them (before the batch's compression and framing). Records are read, not estimated, so the
number is exact for whatever the producers wrote, retries and duplicates included.

Env: IMGPIPE_KAFKA__BROKERS (default 127.0.0.1:9092). Needs confluent-kafka (the project's
Python environment from compose/local/bootstrap has it).
"""

import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

BROKERS = os.environ.get("IMGPIPE_KAFKA__BROKERS", "127.0.0.1:9092")


def consumer():
    return Consumer(
        {
            "bootstrap.servers": BROKERS,
            "group.id": f"topic-bytes-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
        }
    )


def watermarks(client, topic):
    """(low, high) offsets of every partition of `topic`."""
    metadata = client.list_topics(topic, timeout=10)
    partitions = metadata.topics[topic].partitions
    if metadata.topics[topic].error is not None or not partitions:
        sys.exit(f"topic_bytes.py: topic {topic} not found on {BROKERS}")
    return {
        p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        for p in sorted(partitions)
    }


def mark(topic):
    client = consumer()
    print(json.dumps({str(p): high for p, (_, high) in watermarks(client, topic).items()}))
    client.close()


def since(topic, mark_file):
    with open(mark_file) as f:
        start = {int(p): o for p, o in json.load(f).items()}
    client = consumer()
    # From the mark (or the oldest record still kept) to the end offsets now.
    ranges = {p: (max(start.get(p, 0), low), high) for p, (low, high) in watermarks(client, topic).items()}
    pending = {p: high for p, (begin, high) in ranges.items() if high > begin}
    totals = {"records": 0, "key": 0, "value": 0, "headers": 0}
    if pending:
        client.assign([TopicPartition(topic, p, ranges[p][0]) for p in pending])
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            message = client.poll(1.0)
            if message is None:
                continue
            partition = message.partition()
            if message.error() is not None:
                # The end of a partition counts as reaching its end offset: a transaction's
                # commit marker takes an offset but is never delivered as a record.
                eof = message.error().code() == KafkaError._PARTITION_EOF
                if eof and partition in pending and message.offset() >= pending[partition]:
                    del pending[partition]
                continue
            if partition not in pending or message.offset() >= pending[partition]:
                continue
            totals["records"] += 1
            totals["key"] += len(message.key() or b"")
            totals["value"] += len(message.value() or b"")
            totals["headers"] += sum(len(k) + len(v or b"") for k, v in message.headers() or [])
            if message.offset() + 1 >= pending[partition]:
                del pending[partition]
        if pending:
            sys.exit(f"topic_bytes.py: could not read up to the end offsets of {sorted(pending)}")
    client.close()
    total = totals["key"] + totals["value"] + totals["headers"]
    per_record = total / totals["records"] if totals["records"] else 0
    print(
        f"records={totals['records']} bytes={total} key={totals['key']} value={totals['value']}"
        f" headers={totals['headers']} per_record={per_record:.0f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "mark":
        mark(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "since":
        since(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
