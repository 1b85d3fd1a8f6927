"""The interface catalog against CONTRACT §3 and the standard's tables B.5-B.35 and 附录C."""

from __future__ import annotations

import attrs
import pytest

from gateway.protocol.catalog import (
    INTERFACES,
    DeliveryClass,
    Field,
    FieldType,
    Interface,
    lookup,
)

L, R, Q, C, S = (
    DeliveryClass.LOCAL,
    DeliveryClass.REPORT,
    DeliveryClass.QUERY,
    DeliveryClass.COMMAND,
    DeliveryClass.SYNC,
)

# CONTRACT §3, copied by hand: number, code, 接口, up class, down class, deadline.
CONTRACT_TABLE: list[tuple[int, str, str, DeliveryClass | None, DeliveryClass | None, float | None]] = [
    (1, "login", "登录", L, None, None),
    (2, "carIn", "车辆入场", R, None, 30.0),
    (3, "carFix", "车辆校正", R, S, 600.0),
    (4, "carOut", "车辆出场", R, None, 30.0),
    (5, "carImage", "图片上传", R, None, 600.0),
    (6, "parkEnv", "环境数据上传", R, None, 600.0),
    (7, "freeSpace", "剩余车位数上传", R, None, 30.0),
    (8, "heartbeat", "心跳保持", L, None, None),
    (9, "feeQuery", "停车费用查询", None, C, 30.0),
    (10, "prepay", "预缴费信息推送", R, S, 30.0),
    (11, "reserve", "预约车辆下发", None, S, 600.0),
    (12, "coupon", "优惠券同步", R, S, 30.0),
    (13, "cashierOff", "收费员结账", R, None, 60.0),
    (14, "backfill", "补报账单", R, None, None),
    (15, "reconcile", "汇总对账", R, None, None),
    (16, "tempPrice", "临停收费价格同步", R, S, 600.0),
    (17, "noPlateIn", "无牌车入场请求", None, C, 1.0),
    (18, "noPlateOut", "无牌车出场请求", None, C, 1.0),
    (19, "monthCard", "月卡和错时卡办理记录", R, S, 60.0),
    (20, "monthPrice", "月卡和错时卡价格同步", R, S, 600.0),
    (21, "gateOpen", "远程开闸", None, C, 2.0),
    (22, "gateState", "查询道闸状态", None, C, 10.0),
    (23, "gateManual", "异常(手动)开闸记录", R, None, 10.0),
    (24, "devStatus", "硬件状态信息", R, None, 300.0),
    (25, "pcStatus", "分站电脑状态上传", R, None, 300.0),
    (26, "devReboot", "硬件远程重启", None, C, 2.0),
    (27, "channel", "通道信息上传", R, None, 300.0),
    (28, "blacklist", "黑名单下发", None, S, 300.0),
    (29, "member", "会员名单下发", None, S, 300.0),
    (30, "autoPay", "无感支付", Q, None, 1.0),
    (31, "invoice", "电子发票同步", R, S, 10.0),
]

ENVELOPE = {"token", "code", "oprNum", "signature", "resultCode", "resultMessage", "data"}


def _all_fields(fields: tuple[Field, ...]) -> list[Field]:
    """Every field of a tuple, nested members included."""
    found: list[Field] = []
    for field in fields:
        found.append(field)
        found.extend(_all_fields(field.items))
    return found


def _every_field() -> list[tuple[Interface, Field]]:
    return [
        (interface, field)
        for interface in INTERFACES
        for field in _all_fields(interface.request) + _all_fields(interface.response)
    ]


def test_thirty_one_interfaces_in_table_1_order() -> None:
    """The catalog holds the 31 interfaces of Table 1, numbered 1 to 31 in order."""
    assert len(INTERFACES) == 31
    assert [interface.number for interface in INTERFACES] == list(range(1, 32))


@pytest.mark.parametrize("row", CONTRACT_TABLE, ids=[row[1] for row in CONTRACT_TABLE])
def test_interface_matches_the_contract(
    row: tuple[int, str, str, DeliveryClass | None, DeliveryClass | None, float | None],
) -> None:
    """Each interface has the contract's code, title, classes and deadline, and table B.(n+4)."""
    number, code, title, uplink, downlink, deadline = row
    interface = INTERFACES[number - 1]
    assert (interface.number, interface.code, interface.title) == (number, code, title)
    assert (interface.uplink, interface.downlink, interface.deadline) == (
        uplink,
        downlink,
        deadline,
    )
    assert interface.table == f"B.{number + 4}"


def test_codes_are_the_contracts() -> None:
    """The codes are exactly the contract's, and no two interfaces share one."""
    assert [interface.code for interface in INTERFACES] == [row[1] for row in CONTRACT_TABLE]
    assert len({interface.code for interface in INTERFACES}) == 31


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_lookup_by_code_and_by_number(interface: Interface) -> None:
    """lookup finds an interface by its mnemonic and by its Table-1 number as a string."""
    assert lookup(interface.code) is interface
    assert lookup(str(interface.number)) is interface


@pytest.mark.parametrize("key", ["", "0", "32", "02", " 2", "carin", "CarIn", "car_in", "login "])
def test_lookup_unknown(key: str) -> None:
    """lookup answers None for anything that is neither a code nor a number 1-31 as written."""
    assert lookup(key) is None


def test_catalog_values_are_frozen() -> None:
    """Interfaces and fields cannot be changed after construction."""
    interface = lookup("carIn")
    assert interface is not None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        interface.code = "x"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        interface.request[0].required = False  # type: ignore[misc]


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_field_names_unique(interface: Interface) -> None:
    """Within a request, a response, or one nested member list, no field name repeats."""
    tuples = [interface.request, interface.response]
    tuples += [field.items for field in _all_fields(interface.request) if field.items]
    tuples += [field.items for field in _all_fields(interface.response) if field.items]
    for fields in tuples:
        names = [field.name for field in fields]
        assert len(names) == len(set(names)), names


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_no_envelope_members(interface: Interface) -> None:
    """Envelope members are not business fields; only login's answer carries a token (B.5)."""
    request = {field.name for field in _all_fields(interface.request)}
    response = {field.name for field in _all_fields(interface.response)}
    assert not request & ENVELOPE
    if interface.code == "login":
        assert response & ENVELOPE == {"token"}
    else:
        assert not response & ENVELOPE


# The request/response field codes of several B tables as printed, with the
# catalog's two documented spelling fixes applied (B.18 outcross, B.22 plateno).
STANDARD_REQUEST_FIELDS: dict[str, list[str]] = {
    "login": ["parkUserName", "parkUserPwd"],
    "carIn": [
        "recordCode", "carNum", "inCross", "inTime", "inIdentity", "carColor", "operatorName",
    ],
    "carFix": [
        "recordCode", "carNum", "correctionNum", "inCross", "inTime", "inIdentity",
        "parkMinutes", "carColor", "outCross", "operatorName",
    ],
    "carOut": [
        "recordCode", "carNum", "inCross", "outCross", "inTime", "outTime", "inIdentity",
        "outIdentity", "parkMinutes", "carColor", "chargeStatus", "payMoney", "discountMoney",
        "incomeMoney", "paymentMode", "payOrigin", "exitType", "operatorName",
    ],
    "carImage": ["recordCode", "imageCode", "imageType", "imageBase64"],
    "parkEnv": ["parkCode", "totalNum", "weather", "situation"],
    "freeSpace": ["parkCode", "emptyNum"],
    "heartbeat": [],
    "feeQuery": ["recordCode", "parkCode", "couponList"],
    "backfill": [
        "parkCode", "carNum", "inCross", "outCross", "inTime", "outTime", "carType",
        "recordCode", "inImage", "outImage", "payMoney", "incomeMoney", "discountMoney",
        "paymentRecordList",
    ],
    "noPlateIn": ["parkCode", "plateNum", "inCross"],
    "noPlateOut": [
        "parkCode", "plateNum", "recordCode", "inCross", "outCross", "inTime", "outTime",
        "inIdentity", "outIdentity", "carColor",
    ],
    "gateOpen": ["parkCode", "barCode", "isOpen"],
    "gateState": ["parkCode", "barCode"],
    "devStatus": [
        "equipmentCode", "equipmentName", "linkStatus", "equipmentType", "pcName",
        "channelType", "createTime", "operationType",
    ],
    "channel": ["pcName", "channelName", "channelId", "channelType", "isExit", "actionType"],
    "blacklist": [
        "carNum", "parkCode", "oweMoney", "carType", "paymentStatus", "paymentTime",
        "refResource", "Type",
    ],
    "member": [
        "parkCode", "carNum", "carColor", "memberID", "memberPhone", "memberType", "isAutopay",
    ],
    "autoPay": [
        "recordCode", "inTime", "outTime", "carNum", "carColor", "payMoney", "discountMoney",
        "incomeMoney",
    ],
    "invoice": ["recordCode", "invoiceCode", "payment"],
}  # fmt: skip

STANDARD_RESPONSE_FIELDS: dict[str, list[str]] = {
    "login": ["token", "parkCode"],
    "carIn": [],
    "carImage": ["imagePath"],
    "feeQuery": [
        "recordCode", "payMoney", "discountMoney", "chargeMoney", "realPayMoney", "couponList",
        "chargeTime",
    ],
    "gateOpen": ["barCode", "status"],
    "gateState": ["barCode", "barStatus"],
    "devReboot": ["barCode", "status"],
    "autoPay": [
        "payStatus", "orderCode", "balancePay", "couponValue", "actualPay", "realPayMoney",
        "failReason", "discountDetail",
    ],
    "blacklist": [],
}  # fmt: skip

STANDARD_NESTED_FIELDS: dict[tuple[str, str], list[str]] = {
    ("feeQuery", "couponList"): [
        "usercouponId", "couponType", "timeType", "parkingTime", "startDate", "endDate",
        "discountMoney", "maxDiscountMoney", "discountRate", "freeMinutes", "timeoutValid",
        "minimumConsumption",
    ],
    ("backfill", "paymentRecordList"): [
        "billNumber", "amountReceivable", "actualReceivable", "discountAmount", "payTime",
        "payStatus", "paymentMode", "payOrigin", "tollerAccout",
    ],
    ("autoPay", "discountDetail"): ["couponName", "discountAmout", "discountType"],
    ("coupon", "discountDetail"): ["couponName", "discountAmout", "discountType"],
    ("prepay", "discountDetail"): ["discountType", "couponName", "discountMoney"],
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(STANDARD_REQUEST_FIELDS))
def test_request_fields_are_the_b_tables(code: str) -> None:
    """An interface's request fields are those of its B table, in the table's order."""
    interface = lookup(code)
    assert interface is not None
    assert [field.name for field in interface.request] == STANDARD_REQUEST_FIELDS[code]


@pytest.mark.parametrize("code", sorted(STANDARD_RESPONSE_FIELDS))
def test_response_fields_are_the_b_tables(code: str) -> None:
    """An interface's response fields are those of its B table's 响应 column, envelope aside."""
    interface = lookup(code)
    assert interface is not None
    assert [field.name for field in interface.response] == STANDARD_RESPONSE_FIELDS[code]


@pytest.mark.parametrize("key", sorted(STANDARD_NESTED_FIELDS))
def test_nested_lists_have_their_members(key: tuple[str, str]) -> None:
    """The B tables' nested lists are List fields whose items are the members listed under them."""
    code, name = key
    interface = lookup(code)
    assert interface is not None
    fields = {field.name: field for field in interface.request + interface.response}
    field = fields[name]
    assert field.type is FieldType.LIST
    assert [item.name for item in field.items] == STANDARD_NESTED_FIELDS[key]


def test_feequery_response_coupons_are_the_request_coupons() -> None:
    """feeQuery's 优惠信息列表 lists coupons with the same members as the request's couponList."""
    interface = lookup("feeQuery")
    assert interface is not None
    request = {field.name: field for field in interface.request}
    response = {field.name: field for field in interface.response}
    assert request["couponList"].items == response["couponList"].items


ENUMS: list[tuple[str, str, tuple[int, ...] | tuple[str, ...]]] = [
    ("carIn", "inIdentity", (1, 2, 3, 4, 5)),
    ("carOut", "inIdentity", (1, 2, 3, 4, 5)),
    ("noPlateOut", "inIdentity", (1, 2, 3, 4, 5)),
    ("monthCard", "inIdentity", (0, 1, 2, 3, 4, 5)),
    ("carImage", "imageType", (1, 2, 3, 4)),
    ("carOut", "paymentMode", tuple(range(13))),
    ("carOut", "payOrigin", tuple(range(10))),
    ("backfill", "paymentRecordList.payStatus", (0, 1, 2)),
    ("backfill", "paymentRecordList.paymentMode", tuple(range(13))),
    ("backfill", "paymentRecordList.payOrigin", tuple(range(10))),
    ("autoPay", "payStatus", (0, 1, 2)),
    ("monthCard", "status", (0, 1, 2)),
    ("feeQuery", "couponList.couponType", (0, 1, 3, 4)),
    ("feeQuery", "couponList.timeType", (0, 1, 2)),
    ("coupon", "couponList.couponType", (0, 1, 3, 4)),
    ("coupon", "discountDetail.discountType", (1, 2, 3)),
    ("prepay", "discountDetail.discountType", (1, 2, 3)),
    ("autoPay", "discountDetail.discountType", (1, 2, 3)),
    ("autoPay", "failReason", tuple(range(9))),
    ("blacklist", "paymentStatus", (1, 2)),
    ("blacklist", "carType", ("1", "2", "3", "4")),
    ("blacklist", "Type", (1, 2)),
    ("devStatus", "linkStatus", (0, 1)),
    ("devStatus", "equipmentType", (2, 3, 4, 5, 6)),
    ("devStatus", "channelType", ("0", "1", "2", "3", "4", "5")),
    ("devStatus", "operationType", (0, 1, 2, 3)),
    ("channel", "channelType", ("0", "1", "2", "3", "4", "5")),
    ("channel", "actionType", (1, 2, 3)),
    ("gateManual", "openType", (1, 2, 3, 4)),
]


def _field(code: str, dotted: str) -> Field:
    """The field at `dotted` ("couponList.couponType") in an interface's request or response."""
    interface = lookup(code)
    assert interface is not None
    fields = interface.request + interface.response
    field: Field | None = None
    for part in dotted.split("."):
        field = next(f for f in fields if f.name == part)
        fields = field.items
    assert field is not None
    return field


@pytest.mark.parametrize("code, dotted, expected", ENUMS, ids=[f"{c}.{d}" for c, d, _ in ENUMS])
def test_enumerations(code: str, dotted: str, expected: tuple[int, ...] | tuple[str, ...]) -> None:
    """Fields the standard enumerates carry the enumeration, from 附录C or the B table's 说明."""
    assert _field(code, dotted).enum == expected


REQUIRED: dict[str, set[str]] = {
    "login": {"parkUserName", "parkUserPwd"},
    "carIn": {"recordCode", "carNum"},
    "carFix": {"recordCode"},
    "carOut": {"recordCode", "carNum"},
    "carImage": {"recordCode"},
    "parkEnv": {"totalNum"},
    "freeSpace": {"emptyNum"},
    "feeQuery": {"recordCode"},
    "noPlateIn": {"plateNum"},
    "noPlateOut": {"plateNum"},
    "gateOpen": {"barCode"},
    "gateState": {"barCode"},
    "blacklist": {"carNum"},
    "autoPay": {"recordCode"},
    "invoice": {"recordCode"},
}


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_required_fields_are_few(interface: Interface) -> None:
    """Only the fields a message means nothing without are required; responses require nothing."""
    required = {field.name for field in _all_fields(interface.request) if field.required}
    assert required == REQUIRED.get(interface.code, set())
    assert not [field for field in _all_fields(interface.response) if field.required]


def test_images_are_not_required() -> None:
    """carImage's imageBase64 is optional: the picture may come as a multipart file part."""
    assert not _field("carImage", "imageBase64").required


TIMES = [
    ("carIn", "inTime"),
    ("carOut", "outTime"),
    ("backfill", "paymentRecordList.payTime"),
    ("prepay", "entryTime"),
    ("prepay", "predictExitTime"),
    ("monthCard", "beginTime"),
    ("monthCard", "operatorTime"),
    ("gateManual", "operateTime"),
    ("cashierOff", "uploadDate"),
    ("reconcile", "checkTime"),
    ("blacklist", "paymentTime"),
    ("feeQuery", "couponList.startDate"),
    ("reserve", "reserveTime"),
    ("devStatus", "createTime"),
]

NOT_TIMES = [
    ("reconcile", "dateTime"),
    ("monthPrice", "dayTimeStart"),
    ("monthPrice", "nightTimeEnd"),
    ("feeQuery", "chargeTime"),
]


@pytest.mark.parametrize("code, dotted", TIMES)
def test_time_fields(code: str, dotted: str) -> None:
    """Time members are String fields marked as yyyy-MM-dd HH:mm:ss."""
    field = _field(code, dotted)
    assert field.type is FieldType.STRING
    assert field.datetime


@pytest.mark.parametrize("code, dotted", NOT_TIMES)
def test_not_time_fields(code: str, dotted: str) -> None:
    """Dates, times of day and 计费时间 carry no date-time format: the standard gives none."""
    assert not _field(code, dotted).datetime


LENGTHS = [
    ("carIn", "recordCode", 20),
    ("carIn", "carNum", 50),
    ("carIn", "inCross", 20),
    ("carIn", "carColor", 20),
    ("carIn", "inTime", 20),
    ("carImage", "imageCode", 100),
    ("carImage", "imageBase64", None),
    ("parkEnv", "weather", 200),
    ("monthCard", "carNums", 255),
    ("monthCard", "operatorName", 50),
    ("tempPrice", "other", 255),
    ("channel", "channelType", 10),
    ("login", "parkUserPwd", 50),
]


@pytest.mark.parametrize("code, dotted, length", LENGTHS)
def test_lengths_from_appendix_c(code: str, dotted: str, length: int | None) -> None:
    """String lengths are 附录C's, None where C gives none."""
    assert _field(code, dotted).max_length == length


@pytest.mark.parametrize(
    "code, dotted, kind",
    [
        ("parkEnv", "totalNum", FieldType.INT),
        ("carOut", "payMoney", FieldType.FLOAT),
        ("carOut", "parkMinutes", FieldType.INT),
        ("gateOpen", "isOpen", FieldType.BOOLEAN),
        ("channel", "isExit", FieldType.BOOLEAN),
        ("member", "isAutopay", FieldType.BOOLEAN),
        ("devReboot", "restart", FieldType.BOOLEAN),
        ("tempPrice", "dayPrice", FieldType.FLOAT),
        ("autoPay", "balancePay", FieldType.FLOAT),
        ("blacklist", "carType", FieldType.STRING),
        ("gateState", "barStatus", FieldType.INT),
    ],
)
def test_types_from_appendix_c(code: str, dotted: str, kind: FieldType) -> None:
    """Field types are 附录C's by field code."""
    assert _field(code, dotted).type is kind


@pytest.mark.parametrize("pair", _every_field(), ids=lambda p: f"{p[0].code}.{p[1].name}")
def test_field_shape_consistent(pair: tuple[Interface, Field]) -> None:
    """Lengths only on Strings, formats only on Strings, members only on Lists and Objects,
    enumerations of the field's own type, and a title on every field."""
    _, field = pair
    assert field.title
    if field.type is not FieldType.STRING:
        assert field.max_length is None
        assert not field.datetime
    if field.type not in (FieldType.LIST, FieldType.OBJECT):
        assert field.items == ()
    if field.enum is not None:
        kind = str if field.type is FieldType.STRING else int
        assert field.type in (FieldType.STRING, FieldType.INT)
        assert all(type(value) is kind for value in field.enum)
        assert len(set(field.enum)) == len(field.enum)


def test_one_type_per_field_code() -> None:
    """A field code has the same type wherever it appears (附录C types by code)."""
    types: dict[str, set[FieldType]] = {}
    for _, field in _every_field():
        types.setdefault(field.name, set()).add(field.type)
    assert {name: kinds for name, kinds in types.items() if len(kinds) > 1} == {}


def test_heartbeat_has_no_business_fields() -> None:
    """heartbeat carries only the envelope (B.12)."""
    interface = lookup("heartbeat")
    assert interface is not None
    assert interface.request == ()
    assert interface.response == ()


def test_deadline_of_a_downlink() -> None:
    """A downlink's deadline is [deadlines]' when given (by code or number), else §3's, else 30 s."""
    from gateway.protocol.catalog import DEFAULT_DEADLINE, deadline_of

    assert deadline_of("gateOpen", {}) == 2.0
    assert deadline_of("21", {}) == 2.0
    assert deadline_of("gateOpen", {"gateOpen": 3.5}) == 3.5
    assert deadline_of("21", {"gateOpen": 3.5}) == 3.5
    assert deadline_of("heartbeat", {}) == DEFAULT_DEADLINE == 30.0
    assert deadline_of("openSesame", {}) == 30.0
