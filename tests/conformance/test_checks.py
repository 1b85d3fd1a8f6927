"""The check lists follow the catalog, and the kit's sample messages are what the catalog allows."""

from __future__ import annotations

import random
import time

import pytest

from gateway.conformance.checks import (
    invalid_field,
    lot_checks,
    platform_checks,
    uplink_interfaces,
)
from gateway.conformance.samples import (
    AUTO_PAY_ANSWER,
    Scene,
    downlink_sample,
    invalid_variant,
    uplink_sample,
)
from gateway.protocol.catalog import INTERFACES, DeliveryClass, lookup
from gateway.protocol.validation import FieldError, validate
from gateway.simulator.traffic import Layout, Traffic
from tests.simulator.helpers import ZONE


def traffic(seed: int = 5) -> Traffic:
    rng = random.Random(seed)
    return Traffic(Layout.generate("P001", rng), rng, ZONE)


def test_platform_checks_cover_all_31_interfaces_once_by_name() -> None:
    """Every Table-1 interface has a platform check (login by login.accepted); names are unique."""
    checks = platform_checks()
    names = [check.name for check in checks]
    assert len(names) == len(set(names))
    covered = {check.code for check in checks if check.code} | {"login"}
    assert covered == {interface.code for interface in INTERFACES}
    assert len(INTERFACES) == 31


def test_each_report_and_query_uplink_has_an_invalid_check_and_each_downlink_a_check() -> None:
    """invalid.* rows are the report and query uplinks; downlink.* rows the command and sync interfaces."""
    checks = platform_checks()
    invalid = {check.code for check in checks if check.group == "invalid"}
    assert invalid == {i.code for i in INTERFACES if i.uplink in (DeliveryClass.REPORT, DeliveryClass.QUERY)}
    downlinks = [check.code for check in checks if check.group == "downlink"]
    assert downlinks == [interface.code for interface in INTERFACES if interface.downlink is not None]
    assert len(downlinks) == 16


def test_lot_checks_have_a_row_per_uplink_and_downlink() -> None:
    """The lot report has one row per uplink but login (a rule of its own) and per downlink."""
    checks = lot_checks()
    assert len({check.name for check in checks}) == len(checks)
    uplinks = {check.code for check in checks if check.group == "uplink"}
    assert uplinks | {"login"} == {interface.code for interface in uplink_interfaces()}
    assert {check.code for check in checks if check.group == "downlink"} == {
        interface.code for interface in INTERFACES if interface.downlink is not None
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_uplink_samples_validate_and_their_invalid_variants_do_not(seed: int) -> None:
    """Each uplink sample passes the catalog; its invalid variant fails naming the field changed."""
    writer = traffic(seed)
    for interface in uplink_interfaces():
        if interface.code == "login":
            continue
        data = uplink_sample(writer, interface.code, time.time())
        validate(interface.request, data)
        change = invalid_field(interface)
        if interface.uplink is DeliveryClass.LOCAL:
            continue
        assert change is not None
        with pytest.raises(FieldError) as error:
            validate(interface.request, invalid_variant(data, change))
        assert error.value.path.endswith(f".{change.field.name}")
        assert (
            "missing" in change.describe() if change.field.required else "not a number" in change.describe()
        )


def test_downlink_samples_validate() -> None:
    """Each downlink sample passes the catalog, with and without a car to refer to."""
    writer = traffic()
    for interface in INTERFACES:
        if interface.downlink is not None:
            for scene in (Scene(), Scene("P0010000000000000001", "京A12345")):
                validate(interface.request, downlink_sample(writer, interface.code, time.time(), scene))


def test_the_auto_pay_answer_is_a_valid_answer() -> None:
    """The reference platform's autoPay answer passes autoPay's response fields."""
    interface = lookup("autoPay")
    assert interface is not None
    validate(interface.response, AUTO_PAY_ANSWER)
