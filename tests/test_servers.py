"""The test servers themselves: each answers, and comes back after a SIGKILL with its data."""

from __future__ import annotations

from .servers import PostgresServer, RabbitMQServer, RedisServer


def test_redis_answers_and_keeps_data_across_a_kill(redis_server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set("durableq-test:kept", b"1")
    client.close()
    redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    assert client.get("durableq-test:kept") == b"1", "AOF must keep an acknowledged write"
    client.delete("durableq-test:kept")
    client.close()


def test_postgres_answers(postgres_server: PostgresServer) -> None:
    import psycopg

    with psycopg.connect(postgres_server.url) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)


def test_rabbitmq_answers_and_keeps_durable_messages_across_a_kill(
    rabbitmq_server: RabbitMQServer,
) -> None:
    import pika

    con = pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url))
    try:
        channel = con.channel()
        channel.confirm_delivery()
        channel.queue_declare("durableq-test.kept", durable=True)
        channel.basic_publish("", "durableq-test.kept", b"1",
                              pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    finally:
        con.close()
    rabbitmq_server.sync()  # the queue is a second old: see RabbitMQServer.sync
    rabbitmq_server.restart()
    con = pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url))
    try:  # closed even on failure: a leaked connection fails a later test's teardown
        channel = con.channel()
        _, _, body = channel.basic_get("durableq-test.kept", auto_ack=True)
        assert body == b"1", "a confirmed persistent message must survive a kill"
        channel.queue_delete("durableq-test.kept")
    finally:
        con.close()
