"""A second, independent gRPC client (grpcio, Google's C-core client) through outrigger.

Runs the standard health service's Check (unary) and Watch (server streaming) against the
address given, and an unknown service's Check, which must come back NOT_FOUND from the
server (an error status in the trailers, passed through). Exits non-zero on any mismatch.

    python scripts/grpcio_client.py 127.0.0.1:8080
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = health_pb2_grpc.HealthStub(channel)

        reply, call = stub.Check.with_call(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply
        meta = dict(call.initial_metadata())
        assert meta.get("x-outrigger-attempts") == "1", meta
        print("Check: SERVING, x-outrigger-attempts:", meta["x-outrigger-attempts"])

        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            raise AssertionError("an unknown service answered")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
            print("Check of an unknown service:", err.code().name)

        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        first = next(watch)
        assert first.status == health_pb2.HealthCheckResponse.SERVING, first
        watch.cancel()
        print("Watch: first message SERVING, then cancelled by the client")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
