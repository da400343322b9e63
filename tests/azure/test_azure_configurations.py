"""The Configuration dynamic provider against a local IoT Hub: CRUD, ETags, conflicts, throttling, replacement order."""

from __future__ import annotations

import pytest
from azure_testkit import HUB_HOST, KEY, POLICY

from components.azure import configurations as cf
from components.azure.configurations import ConfigurationProvider, HubClient, IotHubError, configuration_id


def props(hub, **over):
    base = {
        "hub_host": HUB_HOST,
        "endpoint": hub.endpoint,
        "key_name": POLICY,
        "hub_key": KEY,
        "id_prefix": "ef-detector-canary",
        "id_hint": "v1.0.0",
        "content": {
            "modulesContent": {"edgefleet-agent": {"properties.desired.models.detector": {"version": "1.0.0", "sas": "${secret:tok}"}}}
        },
        "secrets": {"tok": "sv=secret-value"},
        "target_condition": "tags.ring='canary'",
        "priority": 11,
        "labels": {"edgefleet-ring": "detector.canary", "edgefleet-kind": "ring"},
        "metrics": {"adopted": "SELECT deviceId FROM devices.modules WHERE moduleId = 'edgefleet-agent'"},
        "exclusive_label": "edgefleet-ring",
        "provider_version": cf.PROVIDER_VERSION,
    }
    return {**base, **over}


def test_create_puts_a_configuration_signed_with_a_sas_token_and_fills_secrets(hub):
    p = props(hub)
    created = ConfigurationProvider().create(p)
    live = hub.configs[created.id]
    assert created.id.startswith("ef-detector-canary-v1-0-0-") and len(created.id) <= 128
    assert live["content"]["modulesContent"]["edgefleet-agent"]["properties.desired.models.detector"]["sas"] == "sv=secret-value"
    assert live["targetCondition"] == "tags.ring='canary'" and live["priority"] == 11
    put = next(r for r in hub.requests if r["method"] == "PUT")
    assert put["headers"]["Authorization"].startswith("SharedAccessSignature sr=ef-test.azure-devices.net&sig=")
    assert "If-Match" not in put["headers"]  # create: an existing id must answer 409, not be overwritten
    assert created.outs["etag"] == live["etag"] and created.outs["config_id"] == created.id
    assert "sv=secret-value" not in repr(created.outs["content"])  # the outputs keep the placeholder; the value stays in `secrets`


def test_the_id_changes_exactly_when_the_immutable_content_changes():
    a = configuration_id("ef-x-canary", "v1", {"c": 1})
    assert a == configuration_id("ef-x-canary", "v1", {"c": 1})
    assert a != configuration_id("ef-x-canary", "v1", {"c": 2})
    assert a != configuration_id("ef-x-canary", "v1", {"c": 1}, {"tok": "rotated"})
    long = configuration_id("ef-" + "r" * 63 + "-" + "s" * 63, "v1.0.0-rc.1+build.7", {"c": 1})
    assert len(long) <= 128 and long.islower()


def test_diff_replaces_on_content_and_updates_in_place_otherwise(hub):
    p = props(hub)
    d = ConfigurationProvider().diff("x", p, {**p, "priority": 12, "labels": {**p["labels"], "owner": "ml"}})
    assert d.changes and not d.replaces
    d = ConfigurationProvider().diff("x", p, {**p, "content": {"modulesContent": {}}})
    assert d.replaces == ["content"] and d.delete_before_replace is False
    d = ConfigurationProvider().diff("x", p, {**p, "secrets": {"tok": "rotated"}})
    assert d.replaces == ["secrets"]
    assert not ConfigurationProvider().diff("x", p, dict(p)).changes


def test_update_sends_the_recorded_etag_and_records_the_new_one(hub):
    p = props(hub)
    created = ConfigurationProvider().create(p)
    news = {**p, "priority": 20}
    updated = ConfigurationProvider().update(created.id, created.outs, news)
    put = [r for r in hub.requests if r["method"] == "PUT"][-1]
    assert put["headers"]["If-Match"] == f'"{created.outs["etag"]}"'
    assert hub.configs[created.id]["priority"] == 20
    assert updated.outs["etag"] == hub.configs[created.id]["etag"] != created.outs["etag"]


def test_update_with_a_stale_etag_fails_naming_the_configuration_and_the_hubs_message(hub):
    p = props(hub)
    created = ConfigurationProvider().create(p)
    HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).update_configuration(
        {**hub._public(hub.configs[created.id]), "priority": 50}, hub.configs[created.id]["etag"]
    )  # someone else changed it
    with pytest.raises(IotHubError) as e:
        ConfigurationProvider().update(created.id, created.outs, {**p, "priority": 12})
    text = str(e.value)
    assert e.value.status == 412 and created.id in text and HUB_HOST in text
    assert "PreconditionFailed" in text and "etag" in text.lower() and "pulumi refresh" in text
    assert hub.configs[created.id]["priority"] == 50  # the other writer's change is not overwritten


def test_a_conflicting_configuration_with_other_content_is_an_error(hub):
    p = props(hub)
    created = ConfigurationProvider().create(p)
    hub.configs[created.id]["content"] = {"modulesContent": {"someone": {"properties.desired": {}}}}
    with pytest.raises(IotHubError) as e:
        ConfigurationProvider().create(p)
    assert e.value.status == 409 and created.id in str(e.value) and "different content" in str(e.value)


def test_a_create_whose_first_answer_was_lost_adopts_its_own_configuration(hub):
    p = props(hub)
    first = ConfigurationProvider().create(p)
    again = ConfigurationProvider().create(p)  # e.g. a retry after a timeout: the hub says 409
    assert again.id == first.id and len(hub.configs) == 1
    assert any(r["method"] == "PUT" for r in hub.requests)


def test_throttling_is_retried_after_the_time_the_hub_asks_for(hub, no_sleep):
    hub.fail_next("PUT", "/configurations/", 429, **{"Retry-After": "7"})
    created = ConfigurationProvider().create(props(hub))
    assert created.id in hub.configs
    assert no_sleep and no_sleep[0] >= 7.0  # Retry-After honoured (backoff may only add to it)
    assert [r["method"] for r in hub.requests].count("PUT") == 2


def test_server_errors_are_retried_with_backoff(hub, no_sleep):
    hub.fail_next("PUT", "/configurations/", 503)
    hub.fail_next("PUT", "/configurations/", 500)
    created = ConfigurationProvider().create(props(hub))
    assert created.id in hub.configs and len(no_sleep) == 2


def test_retries_give_up_with_a_clear_error(hub, no_sleep):
    for _ in range(6):
        hub.fail_next("GET", "/configurations", 503)
    with pytest.raises(IotHubError) as e:
        HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).list_configurations()
    assert "gave up after 6 attempts" in str(e.value) and HUB_HOST in str(e.value)
    assert len(no_sleep) == 5


def test_a_client_error_is_not_retried_and_names_the_hubs_message(hub, no_sleep):
    bad = HubClient(HUB_HOST, POLICY, "d3Jvbmcta2V5", hub.endpoint)  # wrong key: 401 from the hub
    with pytest.raises(IotHubError) as e:
        bad.get_configuration("anything")
    assert e.value.status == 401 and "IotHubUnauthorizedAccess" in str(e.value) and "signature does not match" in str(e.value)
    assert not no_sleep


def test_delete_is_unconditional_and_idempotent(hub):
    created = ConfigurationProvider().create(props(hub))
    ConfigurationProvider().delete(created.id, created.outs)
    assert created.id not in hub.configs
    assert [r for r in hub.requests if r["method"] == "DELETE"][-1]["headers"]["If-Match"] == "*"
    ConfigurationProvider().delete(created.id, created.outs)  # already gone: 404 is success for delete


def test_read_reports_a_configuration_deleted_outside_pulumi(hub):
    created = ConfigurationProvider().create(props(hub))
    assert ConfigurationProvider().read(created.id, created.outs).id == created.id
    del hub.configs[created.id]
    assert ConfigurationProvider().read(created.id, created.outs).id is None


def test_replacement_creates_the_new_configuration_before_the_old_one_goes(hub):
    """Pulumi's create-before-delete plus the sibling sweep: at no instant has the ring no configuration."""
    old = ConfigurationProvider().create(props(hub))
    new_p = props(
        hub, id_hint="v1.1.0", content={"modulesContent": {"edgefleet-agent": {"properties.desired.models.detector": {"version": "1.1.0"}}}}
    )
    assert "content" in ConfigurationProvider().diff(old.id, old.outs, new_p).replaces
    new = ConfigurationProvider().create(new_p)  # Pulumi creates the replacement first ...
    ConfigurationProvider().delete(old.id, old.outs)  # ... and deletes the old one at the end (already swept: 404)
    assert set(hub.configs) == {new.id} and new.id != old.id
    ops = [(op, cid) for op, cid, _ in hub.timeline]
    assert ops == [("create", old.id), ("create", new.id), ("delete", old.id)]
    assert all(present for _, _, present in hub.timeline)  # never an empty ring


def test_a_new_ring_configuration_retires_the_rollback_layer_the_gate_left(hub):
    ring = ConfigurationProvider().create(props(hub))
    rollback = ConfigurationProvider().create(
        props(
            hub,
            id_hint="rb-v0.9.0",
            content={"modulesContent": {"rb": {"properties.desired": {}}}},
            labels={"edgefleet-ring": "detector.canary", "edgefleet-kind": "rollback"},
        )
    )
    assert set(hub.configs) == {rollback.id}  # the rollback replaced the ring's layer, no gap
    other = ConfigurationProvider().create(props(hub, id_prefix="ef-detector-early", labels={"edgefleet-ring": "detector.early"}))
    fixed = ConfigurationProvider().create(props(hub, id_hint="v1.0.1", content={"modulesContent": {"x": {"properties.desired": {}}}}))
    assert set(hub.configs) == {fixed.id, other.id}  # only the same ring's siblings go
    assert ring.id not in hub.configs


def test_twin_queries_follow_continuation_tokens(hub):
    from azure_testkit import SimDevice

    for i in range(5):
        hub.devices[f"cam-{i}"] = SimDevice(tags={"group": "cameras"})
    rows = HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).query("SELECT deviceId FROM devices WHERE tags.group = 'cameras'")
    assert sorted(r["deviceId"] for r in rows) == [f"cam-{i}" for i in range(5)]
    assert sum(1 for r in hub.requests if r["path"] == "/devices/query") == 3  # pages of 2, 2, 1


def test_the_provider_pickles_without_credentials():
    import pickle

    data = pickle.dumps(ConfigurationProvider())
    assert KEY.encode() not in data and b"SharedAccessSignature" not in data


@pytest.mark.parametrize("status", [429, 500, 501, 502, 504, 505, 507, 511, 599])
def test_429_and_every_5xx_are_retried(hub, no_sleep, status):
    hub.fail_next("GET", "/configurations", status)
    assert HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).list_configurations() == []
    assert len(no_sleep) == 1 and [r["method"] for r in hub.requests] == ["GET", "GET"]


def test_retry_after_is_honoured_on_a_server_error_too(hub, no_sleep):
    hub.fail_next("GET", "/configurations", 503, **{"Retry-After": "11"})
    HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).list_configurations()
    assert no_sleep and no_sleep[0] >= 11.0


@pytest.mark.parametrize("status", [400, 403, 404, 408, 409, 412])
def test_other_4xx_are_not_retried(hub, no_sleep, status):
    hub.fail_next("GET", "/configurations", status)
    with pytest.raises(IotHubError) as e:
        HubClient(HUB_HOST, POLICY, KEY, hub.endpoint).list_configurations()
    assert e.value.status == status and not no_sleep


def test_a_new_hub_key_is_an_in_place_update_that_the_later_delete_uses(hub):
    """A rotated policy key must reach the saved outputs (never replacing the deployment), or deleting the
    configuration after a later replacement signs with the dead key and gets 401."""
    old = ConfigurationProvider().create(props(hub))
    new_key = "bmV3LXBvbGljeS1rZXktYWZ0ZXItcm90YXRpb24="
    hub.keys[POLICY] = new_key  # regenerated on the hub; the stack reads it again
    news = props(hub, hub_key=new_key)
    d = ConfigurationProvider().diff(old.id, old.outs, news)
    assert d.changes and not d.replaces
    puts = len([r for r in hub.requests if r["method"] == "PUT"])
    updated = ConfigurationProvider().update(old.id, old.outs, news)
    assert updated.outs["hub_key"] == new_key and updated.outs["etag"] == hub.configs[old.id]["etag"]
    assert len([r for r in hub.requests if r["method"] == "PUT"]) == puts  # content untouched: nothing written
    with pytest.raises(IotHubError) as e:  # what the stale outputs would have done
        ConfigurationProvider().delete(old.id, old.outs)
    assert e.value.status == 401 and "policy key" in str(e.value) and "pulumi state delete" in str(e.value)
    ConfigurationProvider().delete(old.id, updated.outs)
    assert old.id not in hub.configs
