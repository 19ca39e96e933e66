"""Model control on a real `bentoml serve`: with 2 and 3 workers a load call reaches one
worker, and by the time it answers every worker serves the new version (no request fails,
none after the call answers from the old version); a corrupted version is refused with the
last good one serving; the routes fail closed (service/engine/coordination.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest.bench_swap import (
    INFER,
    KEEP,
    MODEL,
    Traffic,
    copy_repository,
    corrupt_byte,
    new_version,
)
from loadtest.servers import Server, start_server
from service.http.auth import BearerTokens, admin_refusal


def repository(tmp_path: Path) -> Path:
    return copy_repository(tmp_path / "models")


def wait_for_requests(traffic: Traffic, since: float, count: int, limit_s: float = 120) -> None:
    """Until `count` requests sent after `since` have been answered (or `limit_s` passed)."""
    deadline = time.monotonic() + limit_s
    while len(traffic.since(since)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [2, 3])
def test_every_worker_switches_before_the_load_call_answers(tmp_path: Path, workers: int) -> None:
    repo = repository(tmp_path)
    server = start_server(
        tmp_path, model_dir=str(repo), workers=str(workers), model_control="explicit"
    )
    try:
        load = f"{server.url}/v2/repository/models/{MODEL}/load"
        with Traffic(server.url, 16) as traffic:
            time.sleep(1.0)
            new_version(repo, MODEL, 2)
            r = httpx.post(load, timeout=180)
            assert r.status_code == 200, r.text
            switched = time.monotonic()
            wait_for_requests(traffic, switched, 50)  # a count, not a time: any machine's speed
            new_version(repo, MODEL, 3, corrupt_byte)
            refused = httpx.post(load, timeout=180)
            refused_at = time.monotonic()
            wait_for_requests(traffic, refused_at, 20)
        results = traffic.results
        failures = [r for r in results if r[2] != 200]
        assert not failures, failures[:5]
        after = traffic.since(switched)
        assert len(after) > 50 and {r[3] for r in after} == {"2"}, {r[3] for r in after}
        assert refused.status_code == 400 and "sha256" in refused.json()["error"], refused.text
        assert {r[3] for r in traffic.since(refused_at)} == {"2"}
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()
        states = {(row["name"], row["version"]): row for row in index}
        assert states[(MODEL, "2")]["state"] == "READY"
        assert states[(MODEL, "3")]["state"] == "UNAVAILABLE"
        assert "sha256" in states[(MODEL, "3")]["reason"]
        meta = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=30).json()
        assert meta["versions"] == ["2"]
        # readiness of one version: false (not 200) for the refused one
        ready = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/3/ready", timeout=30)
        assert ready.status_code != 200
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_model_control_is_refused_where_the_mode_does_not_allow_it(tmp_path: Path) -> None:
    server = start_server(tmp_path, model_dir=str(repository(tmp_path)))
    try:
        r = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=30)
        assert r.status_code == 409 and "RNNSERVE_MODEL_CONTROL" in r.json()["error"]
        index = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}, timeout=30)
        assert {row["name"] for row in index.json()} == set(KEEP)
    finally:
        server.stop()


def test_the_control_routes_need_the_admin_token(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        model_dir=str(repository(tmp_path)),
        model_control="explicit",
        api_tokens="infer-token",
        admin_tokens="admin-token",
    )
    url = f"{server.url}/v2/repository/models/{MODEL}/load"
    try:
        for headers in ({}, {"authorization": "Bearer infer-token"}):
            r = httpx.post(url, headers=headers, timeout=30)
            assert r.status_code == 401 and "admin token" in r.json()["error"], r.text
        r = httpx.post(url, headers={"authorization": "Bearer admin-token"}, timeout=60)
        assert r.status_code == 200, r.text
        # the admin token is not an inference token
        infer = httpx.post(
            f"{server.url}/v2/models/{MODEL}/infer",
            json=INFER,
            headers={"authorization": "Bearer admin-token"},
            timeout=30,
        )
        assert infer.status_code == 401
    finally:
        server.stop()


def test_the_admin_rule_fails_closed() -> None:
    none, admin = BearerTokens((), ()), BearerTokens(("adm",), ())
    bearer = [b"Bearer adm"]
    assert admin_refusal(admin, True, bearer, "10.0.0.9") is None
    assert admin_refusal(admin, False, [b"Bearer x"], "127.0.0.1") is not None
    closed = admin_refusal(none, True, bearer, "127.0.0.1")
    assert closed is not None and closed[0] == 403  # API tokens and no admin token: closed
    assert admin_refusal(none, False, [], "127.0.0.1") is None  # no tokens: this machine only
    assert admin_refusal(none, False, [], "::1") is None
    remote = admin_refusal(none, False, [], "10.0.0.9")
    assert remote is not None and remote[0] == 403 and "loopback" in remote[1]


def test_tritons_own_clients_drive_model_control_over_http_and_grpc(tmp_path: Path) -> None:
    """tritonclient's repository calls, HTTP and gRPC, against one explicit-mode server."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo = repository(tmp_path)
    server = start_server(tmp_path, model_dir=str(repo), model_control="explicit")
    try:
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(server.grpc_target)
        index = {(m["name"], m["version"]): m["state"] for m in http.get_model_repository_index()}
        assert index[(MODEL, "1")] == "READY"
        new_version(repo, MODEL, 2)
        http.load_model(MODEL)
        assert http.is_model_ready(MODEL, "2") and not http.is_model_ready(MODEL, "1")
        assert grpc.is_model_ready(MODEL, "2")
        grpc_index = grpc.get_model_repository_index(as_json=True)["models"]
        assert {(m["name"], m.get("version"), m.get("state")) for m in grpc_index} >= {
            (MODEL, "2", "READY"),
            (MODEL, "1", "UNAVAILABLE"),
        }
        grpc.unload_model(MODEL)
        assert not grpc.is_model_ready(MODEL)
        grpc.load_model(MODEL)
        assert http.is_model_ready(MODEL)
        new_version(repo, MODEL, 3, corrupt_byte)
        with pytest.raises(InferenceServerException, match="sha256"):
            grpc.load_model(MODEL)
        with pytest.raises(InferenceServerException, match="sha256"):
            http.load_model(MODEL)
        assert http.get_model_metadata(MODEL)["versions"] == ["2"]
        with pytest.raises(InferenceServerException, match="not supported"):
            http.load_model(MODEL, config='{"max_batch_size": 4}')
        # a rollback: Triton's config override naming the previous version
        previous = json.dumps({"version_policy": {"specific": {"versions": [1]}}})
        http.load_model(MODEL, config=previous)
        assert http.is_model_ready(MODEL, "1") and not http.is_model_ready(MODEL, "2")
        both = json.dumps({"version_policy": {"specific": {"versions": [1, 2]}}})
        grpc.load_model(MODEL, config=both)
        assert http.get_model_metadata(MODEL)["versions"] == ["2", "1"]
        with pytest.raises(InferenceServerException, match="version_policy is"):
            grpc.load_model(MODEL, config='{"version_policy": {"latest": {"num_versions": 0}}}')
    finally:
        assert server.stop() == 0


def versions_answered(url: str, requests: int = 40) -> set[str]:
    """The versions that answer `requests` inferences, each on a new connection (so that
    every worker is reached)."""
    seen = set()
    for _ in range(requests):
        r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=INFER, timeout=30)
        assert r.status_code == 200, r.text
        seen.add(r.json()["model_version"])
    return seen


def workers_of(server: Server) -> list[psutil.Process]:
    """The server's live worker processes."""
    found = []
    for proc in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_restarted_worker_serves_what_the_others_agreed(tmp_path: Path) -> None:
    """After a rollback to version 1 (which the start-up policy would not choose), a worker
    that dies and is restarted serves version 1 as well (it joins the agreement in its
    start-up hook, before it is ready; the watch would correct it within 0.1 s otherwise)."""
    repo = repository(tmp_path)
    new_version(repo, MODEL, 2)
    server = start_server(tmp_path, model_dir=str(repo), workers="2", model_control="explicit")
    try:
        assert versions_answered(server.url) == {"2"}
        rollback = {"parameters": {"config": '{"version_policy": {"specific": {"versions": [1]}}}'}}
        r = httpx.post(
            f"{server.url}/v2/repository/models/{MODEL}/load", json=rollback, timeout=180
        )
        assert r.status_code == 200, r.text
        assert versions_answered(server.url) == {"1"}
        workers = workers_of(server)
        assert len(workers) == 2
        workers[0].kill()
        started = "Completed async startup hook: _start_control"
        deadline = time.monotonic() + 90
        while server.log().count(started) < 3:  # two at start, one for the new worker
            assert time.monotonic() < deadline, "no worker was restarted"
            time.sleep(0.5)
        assert len(workers_of(server)) == 2 and workers[0].pid not in {
            p.pid for p in workers_of(server)
        }
        time.sleep(2)
        for _ in range(3):  # the restarted worker takes connections: none answers 2
            assert versions_answered(server.url) == {"1"}
    finally:
        server.stop()


def test_poll_mode_applies_a_new_version_within_the_interval(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    server = start_server(tmp_path, model_dir=str(repo), model_control="poll", poll_interval_s="1")
    try:
        assert versions_answered(server.url, 3) == {"1"}
        r = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=30)
        assert r.status_code == 409  # poll mode: the folder decides, not calls
        new_version(repo, MODEL, 2)
        deadline = time.monotonic() + 20
        while versions_answered(server.url, 1) != {"2"}:
            assert time.monotonic() < deadline, "version 2 never served"
            time.sleep(0.2)
        new_version(repo, MODEL, 3, corrupt_byte)
        time.sleep(3)
        assert versions_answered(server.url, 5) == {"2"}
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()
        refused = next(row for row in index if row["name"] == MODEL and row["version"] == "3")
        assert refused["state"] == "UNAVAILABLE" and "sha256" in refused["reason"]
    finally:
        server.stop()
