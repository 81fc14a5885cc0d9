"""A real 3-node NATS cluster speaking MQTT: devices on one node, a serve worker on the native NATS port of
another (queue group), PostgreSQL storing what devices report."""

from __future__ import annotations

import os
import time

import pkgs
import pytest
from edgekit_agent.agent import Agent, AgentConfig
from fleet import Host, wait_until
from stores import store_url

from edgekit.fleet.deploy import publish_desired
from edgekit.fleet.failover import failover_rollout
from edgekit.fleet.ingest import Ingest
from edgekit.fleet.natscluster import NatsCluster, nats_server_path
from edgekit.fleet.serve import PackageServer
from edgekit.fleet.store import Store

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nats_server_path() is None, reason="nats-server is not installed (apt install nats-server)"),
]


@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path / "nats", size=3)
    c.start()
    yield c
    c.stop()


def start_agent(cluster, tmp_path, keys, **cfg) -> Agent:
    """A real agent given every node of the cluster (it starts on node 0)."""
    agent = Agent(AgentConfig(broker=",".join(cluster.mqtt_urls), fleet="lab", device_id="dev-1",
                              profile=pkgs.PROFILE, data_dir=tmp_path / "data", trust=[keys[1]], chunk_timeout=1.0,
                              retry_interval=2.0, **cfg))  # fmt: skip
    agent.start()
    return agent


def retained_version(url: str) -> str:
    """The version a fresh subscriber on this node gets as the retained desired state, within 3 s."""
    try:
        probe = Host(url)
    except Exception as exc:  # a diagnosis must not raise in place of the failure it describes
        return f"none ({type(exc).__name__})"
    try:
        return probe.wait_for(lambda: probe.messages["desired"], "the retained desired", timeout=3)[-1]["version"]
    except AssertionError:
        return "none"
    finally:
        probe.close()


def agent_diagnosis(agent: Agent, store: Store) -> str:
    state = {k: agent.updater.state.get(k) for k in ("state", "version", "failed", "reason")}
    events = [(e["kind"], {k: v for k, v in e["body"].items() if k not in ("device", "time", "kind")})
              for e in store.events("lab", "dev-1")][-8:]  # fmt: skip
    return (
        f"updater {state}; connected {agent.connected.is_set()} on node {agent.failover.index} after "
        f"{agent.failover.moves} moves, {agent.connects} connects, {agent.refused_subscriptions} refused "
        f"subscriptions, outbox {len(agent.outbox)}, queued desired {agent.control.qsize()}; events {events}"
    )


def test_an_agent_on_one_node_installs_through_a_serve_worker_on_another_and_reports_into_postgresql(tmp_path, cluster):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    with store_url("postgresql", tmp_path) as db:
        # the worker takes chunk requests and reports from a NATS queue group on node 1; the agent speaks MQTT
        server = PackageServer(repo, "", ingest=Ingest(Store(db)), nats=cluster.nats_urls[1])
        server.start()
        host = Host(cluster.mqtt_urls[2])
        agent = start_agent(cluster, tmp_path, keys, telemetry_interval=0.5, chunk_size=4096)
        try:
            desired = pkgs.desired(tmp_path, repo, keys[0], "v1", 7, extra={"pad.bin": b"x" * 200_000})
            host.desire(desired)  # retained in a replicated JetStream stream, published on node 2
            wait_until(
                lambda: agent.model is not None and agent.model.manifest.version == "v1", "v1 serving", timeout=90
            )
            # every chunk came from the worker (a slow first answer may be asked for again after the 1 s timeout)
            assert server.served >= -(-desired.size // 4096) and agent.failover.index == 0
            store = Store(db)
            # the state naming v1 is published when the agent switches; telemetry may be older than that
            wait_until(
                lambda: store.counts()["telemetry"] >= 2 and store.device("lab", "dev-1")["package_version"] == "v1",
                "telemetry and the v1 state in PostgreSQL",
            )
            # a second agent started with the same device id on another node: each sees the other's live
            # state through the cluster's retained view and reports it once, with no reconnect loop
            nodes = cluster.mqtt_urls[1:] + cluster.mqtt_urls[:1]
            twin = Agent(AgentConfig(broker=",".join(nodes), fleet="lab", device_id="dev-1", profile=pkgs.PROFILE,
                                     data_dir=tmp_path / "twin", trust=[keys[1]]))  # fmt: skip
            twin.start()
            try:
                conflicts = host.wait_for(lambda: len(host.events("conflict")) >= 2 and host.events("conflict"),
                                          "both instances report the conflict", 60)  # fmt: skip
                assert {e["instance"] for e in conflicts} == {agent.instance, twin.instance}
                time.sleep(3)
                assert twin.connects == 1 and agent.connects == 1 and len(host.events("conflict")) == 2
            finally:
                twin.stop()
        finally:
            agent.stop()
            host.close()
            server.stop()


@pytest.mark.parametrize("before_wave", [False, True], ids=["kill-after-publish", "kill-before-publish"])
def test_a_rollout_to_100_devices_completes_when_a_broker_node_dies_and_no_telemetry_is_lost(tmp_path, before_wave):
    """The issue's scenario (also the scaling bench): 100 simulated devices spread over 3 nodes, 2 serve
    workers on NATS, PostgreSQL; node 0 (a third of the devices, worker 0's first URL) is killed with kill -9
    as the rollout's last wave starts, while every device sends QoS1 telemetry at 2 Hz. Killed just before
    the wave's desired states are published, the devices that were on it converge through the surviving
    nodes or the reconciler, and a device whose state the store missed answers the resend with its state."""
    keys = pkgs.keys(tmp_path / "keys")
    built = [
        pkgs.build(pkgs.source_dir(tmp_path / f"src-{v}", extra={"pad.bin": os.urandom(100_000)}),
                   tmp_path / f"{v}.edgepkg", keys[0], counter=n, version=v)
        for n, v in ((1, "v1"), (2, "v2"))
    ]  # fmt: skip
    with store_url("postgresql", tmp_path) as db:
        res = failover_rollout(tmp_path / "run", db, *built, keys[0], before_wave=before_wave)
    assert res["killed_node"] == "n0" and res["on_killed_node"] > 0 and res["still_on_killed_node"] == 0
    assert res["v1"]["status"] == "completed" and res["v1"]["running"] == 100
    assert res["v2"]["status"] == "completed", res["v2"]["log"][-3:]
    assert res["v2"]["running"] == 100
    assert res["states"] == [("online", "v2")], res["states_settled_s"]
    assert res["reconnect_s"] is not None, "some device never reconnected"
    assert res["all_acked"], f"the cluster did not acknowledge {res['unacked']} QoS 1 messages (telemetry, state)"
    assert res["sent"] > 0 and res["lost"] == 0 and res["stored"] == res["sent"], res
    assert res["resent_by_workers"] <= 1  # two workers run the reconciler; the lease lets one resend at a time
    print(f"after the node kill: {res['v2']['converged_after_kill_s']} (seconds until each device ran v2), "
          f"{res['desired_resends']} desired resent")  # fmt: skip


def test_a_real_agent_whose_node_dies_moves_on_installs_the_next_package_and_flushes_its_telemetry(tmp_path, cluster):
    keys = pkgs.keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    repo.mkdir()
    with store_url("postgresql", tmp_path) as db:
        # the reconciler resends desired if the surviving nodes' retained view lags behind the deployment
        server = PackageServer(repo, ",".join(cluster.mqtt_urls[1:]), ingest=Ingest(Store(db)),
                               nats=",".join(cluster.nats_urls[1:]), reconcile_grace=5.0)  # fmt: skip
        server.start()
        host = Host(cluster.mqtt_urls[2])
        agent = start_agent(cluster, tmp_path, keys, telemetry_interval=0.2, chunk_size=16384)
        try:
            host.desire(pkgs.desired(tmp_path, repo, keys[0], "v1", 1, extra={"pad.bin": os.urandom(100_000)}))
            wait_until(lambda: agent.model is not None and agent.model.manifest.version == "v1", "v1", timeout=90)
            cluster.kill(0)  # the agent's node
            # as edgekit deploy does it: returns once the cluster has acknowledged (stored) the retained
            # desired state; a publish made during the JetStream election is re-sent until it is
            v2 = pkgs.desired(tmp_path, repo, keys[0], "v2", 2, extra={"pad.bin": os.urandom(100_000)})
            publish_desired(",".join(cluster.mqtt_urls[1:]), "lab", ["dev-1"], v2)
            Store(db).record_deployment("lab", "dev-1", v2, None, None)  # as edgekit deploy records it
            try:
                wait_until(lambda: agent.model.manifest.version == "v2", "v2 after the node died", timeout=90)
            except AssertionError as exc:  # say where it stopped: this has failed intermittently
                views = {url: retained_version(url) for url in cluster.mqtt_urls[1:]}
                raise AssertionError(f"{exc}; {agent_diagnosis(agent, Store(db))}; retained views {views}") from None
            assert agent.failover.index != 0 and agent.connected.is_set()
            wait_until(lambda: len(agent.outbox) == 0, "the telemetry queued during the failover sent", timeout=60)
            store = Store(db)
            wait_until(lambda: store.device("lab", "dev-1")["package_version"] == "v2", "v2 reported", timeout=30)
            # a retained view that lost the desired state altogether: v3 is recorded as deployed but the
            # cluster never got it; only serve's reconciler can tell the agent (grace 5 s, then one resend)
            v3 = pkgs.desired(tmp_path, repo, keys[0], "v3", 3, extra={"pad.bin": os.urandom(100_000)})
            t0 = time.monotonic()
            store.record_deployment("lab", "dev-1", v3, None, None)
            wait_until(lambda: agent.model.manifest.version == "v3", "v3 through the reconciler", timeout=60)
            assert server.reconciler.stats.resends >= 1, server.reconciler.stats
            assert [e["kind"] for e in store.events("lab", "dev-1")].count("resent_desired") >= 1
            print(f"v3 converged through the reconciler {time.monotonic() - t0:.1f} s after its deployment")
        finally:
            agent.stop()
            host.close()
            server.stop()
