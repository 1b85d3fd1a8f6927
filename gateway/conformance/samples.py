"""Valid `data` for every interface the kit sends, and the invalid variants it must see refused.

Report uplinks come from the simulator's `Traffic` (every message it writes
passes the catalog's validation). What `Traffic` does not write is here: the
`autoPay` query and its answer, and the nine interfaces only a platform sends
(feeQuery, reserve, the no-plate requests, the gate and device commands, the
blacklist and member lists). Up-and-down interfaces (carFix, prepay, coupon,
tempPrice, monthCard, monthPrice, invoice) use the same fields both ways
(one B table), so their downlink samples are `Traffic`'s too.
"""

from __future__ import annotations

import copy

from attrs import frozen

from gateway.conformance.checks import INVALID_VALUE, InvalidField
from gateway.simulator.traffic import Traffic

__all__ = ["AUTO_PAY_ANSWER", "Scene", "downlink_sample", "invalid_variant", "uplink_sample"]

AUTO_PAY_ANSWER: dict[str, object] = {
    "payStatus": 1,
    "orderCode": "AP0000000001",
    "balancePay": 10.0,
    "couponValue": 0.0,
    "actualPay": 10.0,
    "realPayMoney": 10.0,
    "failReason": 0,
    "discountDetail": [],
}
"""A platform's answer to autoPay (B.34): paid without the driver's action."""


@frozen
class Scene:
    """What the downlinks refer to: a car inside (its record and plate) and a no-plate car's plate."""

    record_code: str = ""
    plate: str = ""
    no_plate: str = "临A00001"


def uplink_sample(traffic: Traffic, code: str, at: float) -> object:
    """A valid message `data` of the uplink `code`, as a lot would send it at `at`."""
    if code == "heartbeat":
        return {}
    if code == "autoPay":
        out = traffic.sample("carOut", at)
        assert isinstance(out, dict)
        keys = ("recordCode", "inTime", "outTime", "carNum", "carColor", "payMoney", "discountMoney")
        return {**{key: out[key] for key in keys}, "incomeMoney": out["payMoney"]}
    return traffic.sample(code, at)


def downlink_sample(traffic: Traffic, code: str, at: float, scene: Scene) -> object:
    """A valid message `data` of the downlink `code` for the lot `traffic` describes."""
    layout = traffic.layout
    park = layout.park_code
    plate = scene.plate or traffic.plate()[0]
    gate = layout.gates[0].code if layout.gates else "gate-1"
    if code == "feeQuery":
        return {"recordCode": scene.record_code or "R0000000000000000001", "parkCode": park, "couponList": []}
    if code == "reserve":
        return {
            "parkCode": park,
            "carNum": plate,
            "carSize": "小型车",
            "reserveTime": traffic.time(at + 3600),
            "reserveMinutes": 60,
            "orderValue": 10.0,
        }
    if code == "noPlateIn":
        return {"parkCode": park, "plateNum": scene.no_plate, "inCross": layout.entrances[0].id}
    if code == "noPlateOut":
        return {"parkCode": park, "plateNum": scene.no_plate, "outCross": layout.exits[0].id}
    if code == "gateOpen":
        return {"parkCode": park, "barCode": gate, "isOpen": True}
    if code == "gateState":
        return {"parkCode": park, "barCode": gate}
    if code == "devReboot":
        device = layout.devices[0]
        return {
            "parkCode": park,
            "pcName": device.pc,
            "equipmentCode": device.code,
            "equipmentName": device.name,
            "equipmentType": device.type,
            "restart": True,
        }
    if code == "blacklist":
        return {
            "carNum": plate,
            "parkCode": park,
            "oweMoney": 35.5,
            "carType": "1",
            "paymentStatus": 1,
            "Type": 1,
        }
    if code == "member":
        return {
            "parkCode": park,
            "carNum": plate,
            "carColor": "蓝",
            "memberID": "M000001",
            "memberPhone": "13800000000",
            "memberType": "金卡",
            "isAutopay": True,
        }
    return traffic.sample(code, at)


def invalid_variant(data: object, change: InvalidField) -> object:
    """`data` (an object, or the first of a list) with `change` applied: a field dropped or spoiled."""
    spoiled = copy.deepcopy(data)
    item = spoiled[0] if isinstance(spoiled, list) and spoiled else spoiled
    if not isinstance(item, dict):
        raise ValueError(f"cannot make {data!r} invalid")
    if change.missing:
        item.pop(change.field.name, None)
    else:
        item[change.field.name] = INVALID_VALUE
    return spoiled
