"""The traffic generator: every message it writes passes the gateway's validator, and is realistic."""

from __future__ import annotations

import base64
import random
from collections import Counter

import pytest

from gateway.protocol.catalog import INTERFACES, DeliveryClass, lookup
from gateway.protocol.validation import validate
from gateway.simulator.traffic import EMITTED_CODES, Layout, Traffic, record_prefix
from tests.simulator.helpers import START, ZONE, simulated_lot


def traffic(seed: int = 1, park: str = "P001") -> Traffic:
    rng = random.Random(seed)
    return Traffic(Layout.generate(park, rng), rng, ZONE)


def test_the_simulator_writes_every_report_interface() -> None:
    """EMITTED_CODES is exactly the catalog's report uplinks (autoPay, a query, needs a cloud)."""
    reports = {i.code for i in INTERFACES if i.uplink is DeliveryClass.REPORT}
    assert set(EMITTED_CODES) == reports


@pytest.mark.parametrize("code", EMITTED_CODES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_sample_validates_unchanged(code: str, seed: int) -> None:
    """A sample of every report interface validates against the catalog with nothing to normalise."""
    data = traffic(seed).sample(code, START)
    interface = lookup(code)
    assert interface is not None
    assert validate(interface.request, data) is data


def test_a_lots_traffic_validates_message_by_message() -> None:
    """Thousands of events of a simulated lot: every message it sends validates unchanged."""
    lot, uplink, clock, _ = simulated_lot(seed=11)
    for _ in range(3000):
        clock.advance(1.7)
        lot.event()
    codes = Counter(uplink.codes())
    for _, code, data, _ in uplink.sent:
        interface = lookup(code)
        assert interface is not None
        assert validate(interface.request, data) is data, code
    # Mostly cars, and each car event says what it did to the free spaces.
    assert codes["carIn"] > 500 and codes["carOut"] > 500
    assert codes["freeSpace"] == codes["carIn"] + codes["carOut"] + 1
    assert codes["carImage"] == codes["carIn"] + codes["carOut"]
    rarer = {"devStatus", "pcStatus", "channel", "gateManual", "carFix", "prepay", "coupon", "invoice"}
    assert rarer <= set(codes)


def test_pictures_are_a_few_kilobytes_of_jpeg() -> None:
    """carImage sends the plate close-up and the whole car, each a JPEG of 1-6 KB, base64."""
    t = traffic()
    car = t.new_car(START)
    images = t.car_images(car, START, leaving=False)
    assert [image["imageType"] for image in images] == [1, 2]
    for image in images:
        raw = base64.b64decode(str(image["imageBase64"]))
        assert raw.startswith(b"\xff\xd8") and raw.endswith(b"\xff\xd9")
        assert 800 <= len(raw) <= 6000
    assert [image["imageType"] for image in t.car_images(car, START, leaving=True)] == [3, 4]


def test_exits_carry_fees_and_payment_modes() -> None:
    """Exits of cars parked hours are charged, paid by one of the standard's payment modes."""
    lot, uplink, clock, _ = simulated_lot(seed=5)
    for _ in range(400):
        clock.advance(3)
        lot.event()
    exits = [data for _, code, data, _ in uplink.sent if code == "carOut"]
    assert any(float(exit["payMoney"]) > 0 for exit in exits)
    modes = {exit["paymentMode"] for exit in exits}
    assert len(modes) >= 3 and modes <= set(range(13))
    for exit in exits:
        assert exit["incomeMoney"] == round(exit["payMoney"] - exit["discountMoney"], 2)
        if exit["payMoney"] == 0:
            assert exit["paymentMode"] == 8  # 免费


def test_record_codes_fit_and_are_unique() -> None:
    """Record codes are at most 20 characters (C.7) and never repeat in a lot, long park codes too."""
    for park in ("P001", "停车场-上海-静安-0001"):
        t = traffic(park=park)
        codes = {t.new_car(START).record_code for _ in range(2000)}
        assert len(codes) == 2000
        assert all(len(code) == 20 and code.startswith(record_prefix(park)) for code in codes)


def test_the_same_seed_writes_the_same_traffic() -> None:
    """Two lots with the same seed send the same messages."""
    runs = []
    for _ in range(2):
        lot, uplink, clock, _ = simulated_lot(seed=3)
        for _ in range(200):
            clock.advance(0.5)
            lot.event()
        runs.append([(code, data) for _, code, data, _ in uplink.sent])
    assert runs[0] == runs[1]
