import pytest

from corral.errors import InvalidRequest
from corral.pool import make_worker, parse_worker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:8000", ("http://127.0.0.1:8000", "127.0.0.1", 8000),
                     id="plain"),
        pytest.param("127.0.0.1:8001", ("http://127.0.0.1:8001", "127.0.0.1", 8001),
                     id="no-scheme"),
        pytest.param("http://[::1]:9000/", ("http://[::1]:9000", "::1", 9000), id="ipv6"),
        pytest.param("http://10.0.0.5", ("http://10.0.0.5:80", "10.0.0.5", 80),
                     id="default-port"),
        pytest.param("http://vllm-0.vllm.ns.svc:8000",
                     ("http://vllm-0.vllm.ns.svc:8000", "vllm-0.vllm.ns.svc", 8000),
                     id="dns-name"),
    ],
)
def test_worker_urls_are_normalised(url, expected):
    assert parse_worker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("ftp://127.0.0.1:21", "scheme", id="scheme"),
        pytest.param("http://127.0.0.1:99999", "Port out of range", id="port-range"),
        pytest.param("http://127.0.0.1:8000/v1", "path", id="path"),
        pytest.param("http://user:secret@127.0.0.1:8000", "credentials", id="userinfo"),
        pytest.param("http://:8000", "no host", id="no-host"),
        pytest.param("not a url", "not a host name", id="spaces"),
        pytest.param("http://-bad-:80", "not a host name", id="bad-label"),
        pytest.param("http://127.0.0.1:0", "port 0", id="port-zero"),
        pytest.param("https://10.0.0.5:443", "TLS", id="https"),
    ],
)
def test_bad_worker_urls_are_refused_naming_the_problem(url, problem):
    with pytest.raises(InvalidRequest) as caught:
        parse_worker_url(url)
    assert problem in caught.value.message
    assert "secret" not in caught.value.message


def test_worker_address_brackets_ipv6_and_id_defaults_to_it():
    worker = make_worker("http://[::1]:9000", models=("m",))
    assert worker.address == "[::1]:9000"
    assert worker.id == "[::1]:9000"
    assert worker.serves("m") and not worker.ready


def test_a_worker_its_source_does_not_admit_never_turns_ready():
    from dataclasses import replace

    from corral.pool import WorkerRegistry, WorkerState

    registry = WorkerRegistry(["m"])
    worker = make_worker("http://127.0.0.1:9000", models=("m",))
    registry.upsert(replace(worker, admitted=False))
    assert registry.get(worker.id).state is WorkerState.NOT_READY
    # A health check that passes does not override the source.
    registry.set_state(worker.id, WorkerState.READY)
    assert registry.get(worker.id).state is WorkerState.NOT_READY
    assert registry.ready_workers("m") == ()
    # Admitted again: probed afresh from PENDING, then health checks decide.
    registry.upsert(replace(worker, admitted=True))
    assert registry.get(worker.id).state is WorkerState.PENDING
    registry.set_state(worker.id, WorkerState.READY)
    assert registry.ready_workers("m")[0].id == worker.id
