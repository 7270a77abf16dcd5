"""Independent decoder for the wire-format test: reads one record with Confluent's own Python
client (confluent-kafka's AvroDeserializer against the schema registry) and prints it as JSON.

usage: decode_with_confluent.py BROKERS REGISTRY_URL TOPIC
"""
import json
import sys

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    brokers, registry_url, topic = sys.argv[1:4]
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"confluent-decoder-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    try:
        for _ in range(300):  # at most ~30 s
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                print(f"kafka error: {msg.error()}", file=sys.stderr)
                return 2
            value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
            print(json.dumps(value, default=lambda b: list(b) if isinstance(b, bytes) else str(b)))
            return 0
        print("no record arrived", file=sys.stderr)
        return 1
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
