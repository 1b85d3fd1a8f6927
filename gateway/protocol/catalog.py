"""The 31 interfaces of T/CPMI 002-2018 as data: codes, delivery, deadlines and fields.

Everything that needs to know an interface - validation, JSON Schemas, docs, the
conformance kit - reads this table; nothing else spells out field lists.

Where the values come from:

- numbers, codes, titles, directions, classes and deadlines: CONTRACT §3;
- which fields a message carries: the interface's table in 附录B (B.5-B.35), with
  the envelope members (token, code, oprNum, signature, resultCode,
  resultMessage) left out;
- each field's type, maximum length and enumeration: 附录C (C.1-C.8) by field
  code, with the B table's 说明 supplying the enumerations C leaves out. Fields C
  does not define are typed from their B table's 说明; each such choice is
  commented in `_CODES` below.

Required fields. The standard gives business fields no 约束 column, and B.2.3.5
says an absent member means its default value, so almost everything is
optional. The catalog marks `required` only the fields without which a message
means nothing: the record a carIn/carOut/carFix/carImage/autoPay/invoice/feeQuery
is about (`recordCode`), the plate of a carIn/carOut/blacklist entry (`carNum`),
the temporary plate of a no-plate command (`plateNum`), the gate of a gate command
(`barCode`), the counts of parkEnv/freeSpace, and login's credentials. Images are
not required: a carImage may carry its picture as a multipart file part.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from attrs import evolve, frozen


class FieldType(enum.Enum):
    """A field's type as 附录C writes it, plus Object and List for nested members."""

    STRING = "String"
    INT = "Int"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OBJECT = "Object"
    LIST = "List"


class DeliveryClass(enum.Enum):
    """How the gateway carries an interface in one direction (CONTRACT §3)."""

    LOCAL = "local"
    REPORT = "report"
    QUERY = "query"
    COMMAND = "command"
    SYNC = "sync"


@frozen
class Field:
    """One business member of a message's `data`."""

    name: str
    type: FieldType
    title: str
    max_length: int | None = None
    enum: tuple[int, ...] | tuple[str, ...] | None = None
    required: bool = False
    datetime: bool = False
    items: tuple[Field, ...] = ()
    description: str = ""


@frozen
class Interface:
    """One row of Table 1 with its B table: how it travels and what its `data` holds."""

    number: int
    code: str
    title: str
    table: str
    uplink: DeliveryClass | None
    downlink: DeliveryClass | None
    deadline: float | None
    request: tuple[Field, ...]
    response: tuple[Field, ...]


_S = FieldType.STRING
_I = FieldType.INT
_F = FieldType.FLOAT
_B = FieldType.BOOLEAN
_L = FieldType.LIST

_IN_IDENTITY = (1, 2, 3, 4, 5)  # 1 月租车; 2 临时车; 3 储值车; 4 军警车; 5 会员免费车
_PAYMENT_MODE = tuple(range(13))  # 0 未知 ... 12 第三方余额
_PAY_ORIGIN = tuple(range(10))  # 0 未定义 ... 9 线上支付
_CHANNEL_TYPE = ("0", "1", "2", "3", "4", "5")  # 内场/外场/公共 入口/出口 (B.28, B.31)
_EQUIPMENT_TYPE = (2, 3, 4, 5, 6)  # 2 道闸 3 票箱 4 LED 5 自助缴费机 6 车牌识别一体机

# Every field code the B tables use, typed once. Titles here are 附录C's; an
# interface's field takes its own title and 说明 from its B table (see `_use`).
_CODES: dict[str, Field] = {
    field.name: field
    for field in (
        # C.1 停车场基本信息
        Field("channelId", _S, "通道ID", 20),
        # C.1 types channelType String(10); B.28/B.31 enumerate 0..5, so the codes are strings.
        Field("channelType", _S, "通道类型", 10, _CHANNEL_TYPE),
        Field("channelName", _S, "通道名称", 50),
        Field("isExit", _B, "是否直连外场", description="0=否, 1=是"),
        Field("inCross", _S, "入口通道号", 20),
        Field("outCross", _S, "出口通道号", 20),
        Field("totalNum", _I, "总车位数"),
        Field("emptyNum", _I, "剩余车位数"),
        Field("weather", _S, "天气情况", 200),
        Field("situation", _S, "周边活动", 200),
        Field("token", _S, "令牌", 50),
        Field("parkCode", _S, "停车场编码", 50),
        Field("parkUserName", _S, "停车场登录用户名", 50),
        Field("parkUserPwd", _S, "停车场登录密码", 50),
        # C.2 停车场智能设施
        Field("pcName", _S, "分站电脑名称", 50),
        Field("barCode", _S, "道闸编码", 50),
        Field("isOpen", _B, "开关闸动作", description="0=关闸, 1=开闸"),
        # C.2 types operateTime Int, but B.27 gives it as "yyyy-MM-dd HH:mm:ss": B wins.
        Field("operateTime", _S, "开闸时间", datetime=True),
        Field("barStatus", _I, "道闸状态"),
        Field("equipmentCode", _S, "设备编码", 50),
        Field("equipmentName", _S, "设备名称", 50),
        Field("linkStatus", _I, "设备连接状态", enum=(0, 1), description="0 离线 1 在线"),
        Field("equipmentType", _I, "设备类型", enum=_EQUIPMENT_TYPE),
        # C.2 设备工作状态; the month card's `status` (C.8) is given its enum in B.23.
        Field("status", _I, "设备工作状态"),
        Field("restart", _B, "重启操作"),
        Field("terminalCode", _S, "自助缴费机编号", 50),
        # C.4 相关人员
        Field("userName", _S, "用户姓名", 50),
        Field("userId", _S, "用户账号", 50),
        Field("tollerAccout", _S, "收费员账号", 50),  # sic, in both B.18 and C.4
        Field("operatorType", _S, "收费员类型", 50),
        # C.4 says 50, C.8 says 20 for 月卡操作人; one code, one limit: the larger.
        Field("operatorName", _S, "操作员", 50),
        Field("memberID", _S, "会员编号", 50),
        Field("memberPhone", _S, "会员手机号", 50),
        Field("memberType", _S, "会员类型", 50),
        Field("isAutopay", _B, "是否开启自动扣费"),
        # C.5 车辆信息
        Field("carNum", _S, "车牌号", 50),
        Field("carNums", _S, "车牌号组合", 255),
        Field("inIdentity", _I, "车辆类型", enum=_IN_IDENTITY),
        Field("carColor", _S, "车牌颜色", 20),
        Field("correctionNum", _S, "校正车牌号", 50),
        Field("plateNum", _S, "无牌车临时车牌号", 50),
        # C.5 黑名单车辆类型 String(50); B.32 gives it codes 1-4 (as strings, per C's type).
        Field("carType", _S, "黑名单车辆类型", 50),
        # C.6 停车收费价格
        Field("freeMinutes", _I, "免费分钟时间"),
        Field("dayPrice", _F, "日间单价"),
        Field("dayTime", _I, "日间计时长度"),
        Field("nightPrice", _F, "夜间单价"),
        Field("nightTime", _I, "夜间计时长度"),
        Field("cappingAll", _F, "全天封顶额"),
        Field("cappingDay", _F, "日间封顶额"),
        Field("cappingNight", _F, "夜间封顶额"),
        Field("other", _S, "其他描述信息", 255),
        Field("monthlyPrice", _F, "月卡价格"),
        Field("quarterlyPrice", _F, "季卡价格"),
        Field("halfyearPrice", _F, "半年卡价格"),
        Field("yearPrice", _F, "年卡价格"),
        Field("dayMonthlyPrice", _F, "日间包月价格"),
        # Times of day ("08:00"), not date-times: no format is imposed.
        Field("dayTimeStart", _S, "日间开始时间", 20),
        Field("dayTimeEnd", _S, "日间结束时间", 20),
        Field("nightMonthlyPrice", _F, "夜间包月价格"),
        Field("nightTimeStart", _S, "夜间开始时间", 20),
        Field("nightTimeEnd", _S, "夜间结束时间", 20),
        # C.7 停车活动
        Field("inTime", _S, "入场时间", 20, datetime=True),
        Field("recordCode", _S, "停车记录号", 20),
        Field("outTime", _S, "出场时间", 20, datetime=True),
        Field("parkMinutes", _I, "停车时长"),
        Field("outIdentity", _S, "出场身份", 20),
        Field("exitType", _I, "出场方式"),
        # C.7 spells it inOutdoor; B.27 (the wire table) inOutDoor. Not an obvious
        # typo either way, so B's spelling stands.
        Field("inOutDoor", _I, "出入口方向"),
        # B.15 says reserveTime/reserveMinutes where C.7 says orderTime/orderMinutes
        # (预约时间/预约时长): different words, not typos, so B's names with C's types.
        Field("reserveTime", _S, "预约开始时间", 20, datetime=True),
        Field("reserveMinutes", _I, "预约时长"),
        Field("orderValue", _F, "预缴费金额"),
        Field("imageCode", _S, "图片编号", 100),
        Field("imageType", _I, "图片类型", enum=(1, 2, 3, 4)),
        Field("imageBase64", _S, "图片"),
        Field("imagePath", _S, "图片地址", 100),
        Field("inImage", _S, "车辆入场图片"),
        Field("outImage", _S, "车辆出场图片"),
        # C.8 缴费业务
        Field("billNumber", _S, "账单编号", 20),
        Field("orderCode", _S, "订单编号", 20),
        Field("balancePay", _F, "订单金额"),
        Field("payMoney", _F, "应收金额"),
        Field("incomeMoney", _F, "实收金额"),
        Field("discountMoney", _F, "优惠金额"),
        Field("couponValue", _F, "优惠券抵扣金额"),
        Field("msRecordId", _S, "月卡办理ID号", 20),
        Field("beginTime", _S, "月卡开始日期", datetime=True),
        Field("endTime", _S, "月卡结束日期", datetime=True),
        Field("amount", _F, "月卡缴费金额"),
        Field("operatorTime", _S, "月卡办理时间", 100, datetime=True),
        Field("orderMoney", _F, "支付金额"),
        Field("actualReceivable", _F, "车主实付金额"),
        # C.8 gives payTime no format; it is a time like every other *Time.
        Field("payTime", _S, "支付时间", 100, datetime=True),
        Field("payStatus", _I, "支付状态", enum=(0, 1, 2)),
        Field("paymentMode", _I, "支付方式", enum=_PAYMENT_MODE),
        Field("payOrigin", _I, "支付来源", enum=_PAY_ORIGIN),
        # 汇总对账日期: a date, possibly without a time, so no format is imposed.
        Field("dateTime", _S, "汇总对账日期", 100),
        Field("payNum", _I, "交易明细总笔数"),
        Field("payMoneySum", _F, "汇总应收金额"),
        Field("incomeMoneySum", _F, "汇总实收金额"),
        Field("discountMoneySum", _F, "汇总优惠金额"),
        Field("checkTime", _S, "对账时间", 100, datetime=True),
        Field("startDate", _S, "结账开始时间", 100, datetime=True),
        Field("endDate", _S, "结账结束时间", 100, datetime=True),
        Field("moneyNum", _I, "现金实收总笔数"),
        Field("moneySum", _F, "现金实收总金额"),
        Field("couponSum", _F, "纸质优惠券优惠总金额"),
        Field("couponNum", _I, "纸质优惠券优惠总张数"),
        Field("couponName", _S, "优惠券名称", 100),
        Field("usercouponId", _S, "优惠券ID", 100),
        Field("couponType", _I, "优惠券类型", enum=(0, 1, 3, 4)),
        Field("discountType", _I, "优惠类型", enum=(1, 2, 3)),
        Field("uploadDate", _S, "上报时间", 100, datetime=True),
        Field("oweMoney", _F, "欠费金额"),
        Field("paymentStatus", _I, "补缴状态", enum=(1, 2)),
        Field("paymentTime", _S, "补缴时间", 100, datetime=True),
        # C.8 names couponList and discountDetail (支付优惠) without a type; the B
        # tables list their members, so they are lists of objects.
        Field("couponList", _L, "优惠券列表"),
        Field("discountDetail", _L, "支付优惠"),
        # B.18's 支付明细列表 is not in C at all; a list like the two above.
        Field("paymentRecordList", _L, "支付明细列表"),
        # --- Not in 附录C: typed from the B table's 说明 ---
        # B.8 收费状态: every other 状态 in C is Int.
        Field("chargeStatus", _I, "收费状态"),
        # B.13: the coupon members C lacks.
        Field("timeType", _I, "时长券类型", enum=(0, 1, 2)),
        Field("parkingTime", _I, "停车时长"),  # minutes, like parkMinutes
        Field("maxDiscountMoney", _F, "最大优惠金额"),
        Field("discountRate", _F, "折扣率"),  # "保留两位小数"
        Field("timeoutValid", _B, "超时是否有效"),  # "默认 false"
        Field("minimumConsumption", _F, "最低消费金额"),
        Field("chargeMoney", _F, "应缴金额"),
        Field("realPayMoney", _F, "已收金额"),
        # 计费时间: a time or a duration, the table does not say; no format imposed.
        Field("chargeTime", _S, "计费时间"),
        # B.14: its times are written "yyyy-MM-dd HH:MM:SS", taken as HH:mm:ss.
        Field("entryTime", _S, "入场时间", datetime=True),
        Field("predictExitTime", _S, "出场时间", datetime=True),
        # 收费员: C.4 calls it `toller`; `cashier` is a different word, not a typo.
        Field("cashier", _S, "收费员"),
        Field("phoneNumber", _S, "手机号"),
        # 缴费方式: Int like paymentMode, without its enumeration (B.14 gives none).
        Field("payType", _I, "缴费方式"),
        # B.15/B.23/B.24 车辆大小类型 "小型车、大型车": free text, the codes are not given.
        Field("carSize", _S, "车辆大小类型"),
        # B.16/B.34 spell it discountAmout in both tables; C has neither spelling.
        Field("discountAmout", _F, "优惠金额"),
        # B.18 paymentRecordList members.
        Field("amountReceivable", _F, "应收金额"),
        Field("discountAmount", _F, "优惠金额"),
        # B.23 错时卡 members, typed like amount/beginTime/endTime.
        Field("amountDay", _F, "日间错时卡缴费金额"),
        Field("beginTimeDay", _S, "日间错时卡开始时间", datetime=True),
        Field("endTimeDay", _S, "日间错时卡结束时间", datetime=True),
        Field("amountNight", _F, "夜间错时卡缴费金额"),
        Field("beginTimeNight", _S, "夜间错时卡开始时间", datetime=True),
        Field("endTimeNight", _S, "夜间错时卡结束时间", datetime=True),
        # B.27 开闸类型 "1 遥控开闸, 2 远程开闸 3 岗亭开闸, 4 PDA 开闸".
        Field("openType", _I, "开闸类型", enum=(1, 2, 3, 4)),
        # B.28/B.29 连接状态改变时间, a time.
        Field("createTime", _S, "连接状态改变时间", datetime=True),
        # B.28 "0 初始化, 1 新增, 2 删除, 3 明细"; B.29 reuses the code.
        Field("operationType", _I, "操作类型", enum=(0, 1, 2, 3)),
        # B.31 "1=新增, 2=修改, 3=删除".
        Field("actionType", _I, "操作类型", enum=(1, 2, 3)),
        Field("refResource", _S, "名单来源"),
        # B.32 spells it `Type` (capital T); C has no such code, so it stands.
        Field("Type", _I, "操作类型", enum=(1, 2), description="1 增加; 2 移出"),
        Field("actualPay", _F, "实付金额"),
        Field("failReason", _I, "失败原因", enum=tuple(range(9))),
        Field("invoiceCode", _S, "发票编号"),
        Field("payment", _F, "实收金额"),
    )
}


def _use(
    name: str,
    title: str,
    description: str = "",
    *,
    required: bool = False,
    items: tuple[Field, ...] = (),
    enum: tuple[int, ...] | tuple[str, ...] | None = None,
) -> Field:
    """The field code `name` as one B table lists it: its title, 说明 and role there."""
    base = _CODES[name]
    return evolve(
        base,
        title=title,
        description=description or base.description,
        required=required,
        items=items,
        enum=base.enum if enum is None else enum,
    )


# Nested members. B.13's coupon (request couponList; the response's 优惠信息列表
# is taken to list the same coupons, as applied).
_COUPON = (
    _use("usercouponId", "优惠券ID", "业务系统对账用唯一优惠ID"),
    _use("couponType", "优惠券类型", "0 现金券; 1 折扣券; 3 时长券; 4 全免券"),
    _use("timeType", "时长券类型", "couponType 为 3 时不为空: 0 定额; 1 减免; 2 折扣"),
    _use("parkingTime", "停车时长", "可享受优惠的最大停车时长"),
    _use("startDate", "生效日期", "yyyy-MM-dd HH:mm:ss"),
    _use("endDate", "截止日期", "yyyy-MM-dd HH:mm:ss"),
    _use("discountMoney", "优惠金额", "优惠类型为非现金时为 0"),
    _use("maxDiscountMoney", "最大优惠金额", "当优惠券为折扣券时有效"),
    _use("discountRate", "折扣率", "保留两位小数"),
    _use("freeMinutes", "免费分钟数", "时长券时必填, 默认 0"),
    _use("timeoutValid", "超时是否有效", "默认 false"),
    _use("minimumConsumption", "最低消费金额", "满减使用条件限制, 默认 0"),
)

# B.16/B.34 支付优惠 (discountDetail): "支付优惠信息集合".
_DISCOUNT_DETAIL = (
    _use("couponName", "优惠券名称"),
    _use("discountAmout", "优惠金额"),
    _use("discountType", "优惠类型", "1 停车场优惠券; 2 协议折扣券; 3 平台优惠券"),
)

_IDENTITY_NOTE = "1 月租车; 2 临时车; 3 储值车; 4 军警车; 5 会员免费车"
_TIME_NOTE = "yyyy-MM-dd HH:mm:ss"


def _interface(
    number: int,
    code: str,
    title: str,
    uplink: DeliveryClass | None,
    downlink: DeliveryClass | None,
    deadline: float | None,
    request: tuple[Field, ...],
    response: tuple[Field, ...] = (),
) -> Interface:
    """A Table-1 row; its B table is B.(number + 4)."""
    return Interface(
        number=number,
        code=code,
        title=title,
        table=f"B.{number + 4}",
        uplink=uplink,
        downlink=downlink,
        deadline=deadline,
        request=request,
        response=response,
    )


_LOCAL = DeliveryClass.LOCAL
_REPORT = DeliveryClass.REPORT
_QUERY = DeliveryClass.QUERY
_COMMAND = DeliveryClass.COMMAND
_SYNC = DeliveryClass.SYNC

INTERFACES: tuple[Interface, ...] = (
    _interface(
        1,
        "login",
        "登录",
        _LOCAL,
        None,
        None,
        (
            _use("parkUserName", "停车场登录用户名", "安全相关", required=True),
            _use("parkUserPwd", "停车场登录密码", required=True),
        ),
        (
            _use("token", "令牌", "停车场身份识别码"),
            _use("parkCode", "停车场编码"),
        ),
    ),
    _interface(
        2,
        "carIn",
        "车辆入场",
        _REPORT,
        None,
        30.0,
        (
            _use("recordCode", "停车记录号", "车辆入场信息(唯一标识)", required=True),
            _use("carNum", "车牌号", required=True),
            _use("inCross", "入口通道号"),
            _use("inTime", "入场时间"),
            _use("inIdentity", "车辆类型", _IDENTITY_NOTE),
            _use("carColor", "车辆颜色"),
            _use("operatorName", "操作员"),
        ),
    ),
    _interface(
        3,
        "carFix",
        "车辆校正",
        _REPORT,
        _SYNC,
        600.0,
        (
            _use("recordCode", "停车记录号", "车辆入场信息唯一标识", required=True),
            _use("carNum", "车牌号", "校正前车牌号"),
            _use("correctionNum", "校正车牌号", "校正后车牌号"),
            _use("inCross", "入口通道号"),
            _use("inTime", "入场时间"),
            _use("inIdentity", "车辆类型", _IDENTITY_NOTE),
            _use("parkMinutes", "停车时长"),
            _use("carColor", "车辆颜色"),
            _use("outCross", "出口通道号"),
            _use("operatorName", "操作员"),
        ),
    ),
    _interface(
        4,
        "carOut",
        "车辆出场",
        _REPORT,
        None,
        30.0,
        (
            _use("recordCode", "停车记录号", "车辆入场信息(唯一标识)", required=True),
            _use("carNum", "车牌号", required=True),
            _use("inCross", "入口通道号"),
            _use("outCross", "出口通道号"),
            _use("inTime", "入场时间"),
            _use("outTime", "出场时间"),
            _use("inIdentity", "车辆类型", _IDENTITY_NOTE),
            _use("outIdentity", "出场身份"),
            _use("parkMinutes", "停车时长"),
            _use("carColor", "车辆颜色"),
            _use("chargeStatus", "收费状态"),
            _use("payMoney", "应收金额"),
            _use("discountMoney", "优惠金额"),
            _use("incomeMoney", "实收金额"),
            _use("paymentMode", "支付方式", "0 未知 ... 12 第三方余额"),
            _use("payOrigin", "支付来源", "0 未定义 ... 9 线上支付"),
            _use("exitType", "出场方式", "正常/异常放行(pda/ms/遥控器放行)"),
            _use("operatorName", "操作员"),
        ),
    ),
    _interface(
        5,
        "carImage",
        "图片上传",
        _REPORT,
        None,
        600.0,
        (
            _use("recordCode", "停车记录号", required=True),
            _use("imageCode", "图片编号"),
            _use("imageType", "图片类型", "1 入场小图; 2 入场大图; 3 出场小图; 4 出场大图"),
            # Not required: the picture may come as a multipart file part instead.
            _use("imageBase64", "图片", "Base64 形式"),
        ),
        (_use("imagePath", "图片地址"),),
    ),
    _interface(
        6,
        "parkEnv",
        "环境数据上传",
        _REPORT,
        None,
        600.0,
        (
            _use("parkCode", "停车场编码"),
            _use("totalNum", "总车位数", "停车场总车位数", required=True),
            _use("weather", "天气情况", "如晴、多云、阴、暴雨、小雪、大风、冰冻等"),
            _use("situation", "周边活动", "如店庆、球赛、放假等"),
        ),
    ),
    _interface(
        7,
        "freeSpace",
        "剩余车位数上传",
        _REPORT,
        None,
        30.0,
        (
            _use("parkCode", "停车场编码"),
            _use("emptyNum", "剩余车位数", required=True),
        ),
    ),
    _interface(8, "heartbeat", "心跳保持", _LOCAL, None, None, ()),
    _interface(
        9,
        "feeQuery",
        "停车费用查询",
        None,
        _COMMAND,
        30.0,
        (
            _use("recordCode", "停车记录号", required=True),
            _use("parkCode", "停车场编码"),
            _use("couponList", "优惠券列表", items=_COUPON),
        ),
        (
            _use("recordCode", "停车记录号"),
            _use("payMoney", "停车记录金额"),
            _use("discountMoney", "优惠金额"),
            _use("chargeMoney", "应缴金额"),
            _use("realPayMoney", "已收金额"),
            _use("couponList", "优惠信息列表", items=_COUPON),
            _use("chargeTime", "计费时间"),
        ),
    ),
    _interface(
        10,
        "prepay",
        "预缴费信息推送",
        _REPORT,
        _SYNC,
        30.0,
        (
            _use("entryTime", "入场时间", _TIME_NOTE),
            _use("predictExitTime", "出场时间", _TIME_NOTE),
            _use("orderMoney", "支付金额"),
            # B.14 titles it 平台优惠金额 and lists 优惠类型/优惠券名称/优惠金额 after
            # it: the same 支付优惠信息集合 as B.16/B.34, with discountMoney as the amount.
            _use(
                "discountDetail",
                "平台优惠金额",
                items=(
                    _use("discountType", "优惠类型", "1 停车场优惠券; 2 协议折扣券; 3 平台优惠券"),
                    _use("couponName", "优惠券名称"),
                    _use("discountMoney", "优惠金额"),
                ),
            ),
            _use("carNum", "车牌号"),
            _use("orderCode", "订单编号"),
            _use("carColor", "车辆颜色"),
            _use("recordCode", "停车记录号"),
            _use("cashier", "收费员", "中央缴费处的收费员"),
            _use("terminalCode", "自助缴费机编号", "停车场布置的自助缴费机编号"),
            _use("phoneNumber", "手机号"),
            _use("payType", "缴费方式"),
            _use("realPayMoney", "已收金额"),
            _use("parkCode", "停车场编码"),
        ),
    ),
    _interface(
        11,
        "reserve",
        "预约车辆下发",
        None,
        _SYNC,
        600.0,
        (
            _use("parkCode", "停车场编码"),
            _use("carNum", "车牌号"),
            _use("carSize", "车辆大小类型", "小型车、大型车"),
            _use("reserveTime", "预约开始时间"),
            _use("reserveMinutes", "预约时长", "单位: 分钟"),
            _use("orderValue", "预缴费金额"),
        ),
    ),
    _interface(
        12,
        "coupon",
        "优惠券同步",
        _REPORT,
        _SYNC,
        30.0,
        (
            _use("parkCode", "停车场编码"),
            _use("carNum", "车牌号"),
            _use("discountMoney", "优惠金额"),
            _use("couponValue", "优惠券抵扣金额"),
            _use("discountDetail", "支付优惠", "支付优惠信息集合", items=_DISCOUNT_DETAIL),
            # B.16 lists discountType between couponList and couponType; it is kept
            # in discountDetail (as in B.34) and accepted on each coupon as well.
            _use(
                "couponList",
                "优惠券列表",
                items=(
                    _use("discountType", "优惠类型", "1 停车场优惠券; 2 协议折扣券; 3 平台优惠券"),
                    _use("couponType", "优惠券类型", "0 现金券; 1 折扣券; 3 时长券; 4 全免券"),
                    _use("discountRate", "折扣率", "保留两位小数"),
                    _use("usercouponId", "优惠券ID", "业务系统对账用唯一优惠ID"),
                    _use("maxDiscountMoney", "最大优惠金额", "当优惠券为折扣券时有效"),
                ),
            ),
        ),
    ),
    _interface(
        13,
        "cashierOff",
        "收费员结账",
        _REPORT,
        None,
        60.0,
        (
            _use("parkCode", "停车场编码"),
            _use("userId", "用户账号"),
            _use("userName", "用户姓名"),
            _use("operatorType", "收费员类型"),
            _use("outCross", "出口名称"),
            _use("startDate", "结账开始时间"),
            _use("endDate", "结账结束时间"),
            _use("moneyNum", "现金实收总笔数"),
            _use("moneySum", "现金实收总金额"),
            _use("couponSum", "纸质优惠券优惠总金额"),
            _use("couponNum", "纸质优惠券优惠总张数"),
            _use("uploadDate", "上报时间"),
        ),
    ),
    _interface(
        14,
        "backfill",
        "补报账单",
        _REPORT,
        None,
        None,
        (
            _use("parkCode", "停车场编码"),
            _use("carNum", "车牌号"),
            _use("inCross", "入口名称"),
            # B.18 writes `outcross`; C.1 and every other table say outCross.
            _use("outCross", "出口名称"),
            _use("inTime", "入场时间"),
            _use("outTime", "出场时间"),
            # Here 车辆类型, a vehicle type; the code is C.5's String(50) carType.
            _use("carType", "车辆类型"),
            _use("recordCode", "停车记录号"),
            _use("inImage", "车辆入场图片"),
            _use("outImage", "车辆出场图片"),
            _use("payMoney", "应收金额"),
            _use("incomeMoney", "实收金额"),
            _use("discountMoney", "优惠金额"),
            _use(
                "paymentRecordList",
                "支付明细列表",
                "出场数据-账单列表(1对多)",
                items=(
                    _use("billNumber", "账单编号"),
                    _use("amountReceivable", "应收金额"),
                    _use("actualReceivable", "车主实付金额"),
                    _use("discountAmount", "优惠金额"),
                    _use("payTime", "支付时间"),
                    _use("payStatus", "支付状态", "0 未缴费, 1 缴费成功, 2 缴费超时"),
                    _use("paymentMode", "支付方式", "0 未知 ... 12 第三方余额"),
                    _use("payOrigin", "支付来源", "0 未定义 ... 9 线上支付"),
                    _use("tollerAccout", "收费员账号"),
                ),
            ),
        ),
    ),
    _interface(
        15,
        "reconcile",
        "汇总对账",
        _REPORT,
        None,
        None,
        (
            _use("parkCode", "停车场编码"),
            _use("dateTime", "汇总对账日期"),
            _use("payNum", "交易明细总笔数"),
            _use("payMoneySum", "汇总应收金额"),
            _use("incomeMoneySum", "汇总实收总金额"),
            _use("discountMoneySum", "汇总优惠总金额"),
            _use("checkTime", "对账时间"),
        ),
    ),
    _interface(
        16,
        "tempPrice",
        "临停收费价格同步",
        _REPORT,
        _SYNC,
        600.0,
        (
            _use("parkCode", "停车场编码"),
            _use("freeMinutes", "免费分钟时间", "首免费分钟时间"),
            _use("dayPrice", "日间单价"),
            _use("dayTime", "日间计时长度"),
            _use("nightPrice", "夜间单价"),
            _use("nightTime", "夜间计时长度"),
            _use("cappingAll", "全天封顶额"),
            _use("cappingDay", "日间封顶额"),
            _use("cappingNight", "夜间封顶额"),
            _use("other", "其他描述信息", "特殊信息文字描述"),
        ),
    ),
    _interface(
        17,
        "noPlateIn",
        "无牌车入场请求",
        None,
        _COMMAND,
        1.0,
        (
            _use("parkCode", "停车场编码"),
            _use("plateNum", "无牌车临时车牌号", required=True),
            _use("inCross", "入口通道号"),
        ),
    ),
    _interface(
        18,
        "noPlateOut",
        "无牌车出场请求",
        None,
        _COMMAND,
        1.0,
        (
            _use("parkCode", "停车场编码"),
            # B.22 writes `plateno`; B.21 and C.5 name the same item plateNum.
            _use("plateNum", "无牌车临时车牌号", required=True),
            _use("recordCode", "停车记录号", "本地与平台同步车辆入场信息"),
            _use("inCross", "入口通道号"),
            _use("outCross", "出口通道号"),
            _use("inTime", "入场时间"),
            _use("outTime", "出场时间"),
            _use("inIdentity", "车辆类型", _IDENTITY_NOTE),
            _use("outIdentity", "出场身份"),
            _use("carColor", "车辆颜色"),
        ),
    ),
    _interface(
        19,
        "monthCard",
        "月卡和错时卡办理记录",
        _REPORT,
        _SYNC,
        60.0,
        (
            _use("msRecordId", "月卡办理ID号"),
            _use("carNums", "车牌号组合", "支持一卡多车, 多个车牌号码用英文逗号隔开"),
            # B.23 numbers the vehicle types 0-4 (0 月租车 1 临时车 2 免费车 3 储值车
            # 4 军警车) where C.5 numbers them 1-5. A month card is usually 月租车,
            # 0 under B.23, so both numberings are accepted here.
            _use(
                "inIdentity",
                "车辆类型",
                "0 月租车 1 临时车 2 免费车 3 储值车 4 军警车 (B.23); C.5 numbers 1-5",
                enum=(0, 1, 2, 3, 4, 5),
            ),
            _use("carColor", "车牌颜色"),
            _use("carSize", "车辆大小类型", "小型车、大型车"),
            _use("amount", "月卡缴费金额"),
            _use("beginTime", "月卡开始时间", _TIME_NOTE),
            _use("endTime", "月卡结束时间", _TIME_NOTE),
            _use("amountDay", "日间错时卡缴费金额"),
            _use("beginTimeDay", "日间错时卡开始时间", _TIME_NOTE),
            _use("endTimeDay", "日间错时卡结束时间", _TIME_NOTE),
            _use("amountNight", "夜间错时卡缴费金额"),
            _use("beginTimeNight", "夜间错时卡开始时间", _TIME_NOTE),
            _use("endTimeNight", "夜间错时卡结束时间", _TIME_NOTE),
            _use("operatorName", "月卡操作人"),
            _use("operatorTime", "月卡办理时间", _TIME_NOTE),
            _use("status", "月卡状态", "0 禁用 1 启用 2 MS 数据删除", enum=(0, 1, 2)),
        ),
    ),
    _interface(
        20,
        "monthPrice",
        "月卡和错时卡价格同步",
        _REPORT,
        _SYNC,
        600.0,
        (
            _use("monthlyPrice", "月卡价格", "包月收费价格"),
            _use("quarterlyPrice", "季卡价格", "包季度收费价格"),
            _use("halfyearPrice", "半年卡价格", "包半年收费价格"),
            _use("yearPrice", "年卡价格", "包年收费价格"),
            _use("dayMonthlyPrice", "日间包月价格", "日间错时包月"),
            _use("dayTimeStart", "日间开始时间"),
            _use("dayTimeEnd", "日间结束时间"),
            _use("nightMonthlyPrice", "夜间包月价格", "夜间错时包月"),
            _use("nightTimeStart", "夜间开始时间"),
            _use("nightTimeEnd", "夜间结束时间"),
            _use("other", "其他描述信息", "特殊信息文字描述"),
            _use("carSize", "车辆大小类型", "小型车、大型车"),
        ),
    ),
    _interface(
        21,
        "gateOpen",
        "远程开闸",
        None,
        _COMMAND,
        2.0,
        (
            _use("parkCode", "停车场编码"),
            _use("barCode", "道闸编码", "唯一标识码", required=True),
            _use("isOpen", "开关闸动作", "0=关闸, 1=开闸"),
        ),
        (
            _use("barCode", "设备唯一标识码"),
            _use("status", "返回结果"),
        ),
    ),
    _interface(
        22,
        "gateState",
        "查询道闸状态",
        None,
        _COMMAND,
        10.0,
        (
            _use("parkCode", "停车场编码"),
            _use("barCode", "道闸编码", "唯一标识码", required=True),
        ),
        (
            _use("barCode", "道闸编码"),
            _use("barStatus", "道闸状态"),
        ),
    ),
    _interface(
        23,
        "gateManual",
        "异常(手动)开闸记录",
        _REPORT,
        None,
        10.0,
        (
            _use("outCross", "出口通道号"),
            _use("inCross", "入口通道号"),
            _use("inOutDoor", "出入口方向", "车辆出入的方向"),
            _use("carNum", "车牌号"),
            _use("operateTime", "开闸时间", _TIME_NOTE),
            _use("openType", "开闸类型", "1 遥控开闸, 2 远程开闸, 3 岗亭开闸, 4 PDA 开闸"),
            _use("operatorName", "操作员"),
        ),
    ),
    _interface(
        24,
        "devStatus",
        "硬件状态信息",
        _REPORT,
        None,
        300.0,
        (
            _use("equipmentCode", "设备编码", "唯一标识码"),
            _use("equipmentName", "设备名称"),
            _use("linkStatus", "设备连接状态", "0 离线 1 在线"),
            _use(
                "equipmentType",
                "设备类型",
                "2 道闸 3 票箱 4 LED 5 自助缴费机 6 车牌识别一体机",
            ),
            _use("pcName", "分站电脑名称"),
            _use("channelType", "通道类型", "0 内场入口 ... 5 公共出口"),
            _use("createTime", "连接状态改变时间"),
            _use("operationType", "操作类型", "0 初始化, 1 新增, 2 删除, 3 明细"),
        ),
    ),
    _interface(
        25,
        "pcStatus",
        "分站电脑状态上传",
        _REPORT,
        None,
        300.0,
        (
            _use("pcName", "分站电脑名称"),
            _use("linkStatus", "设备连接状态", "0 离线 1 在线"),
            _use("createTime", "连接状态改变时间"),
            _use("operationType", "操作类型", "0 初始化, 1 新增, 2 删除, 3 明细"),
        ),
    ),
    _interface(
        26,
        "devReboot",
        "硬件远程重启",
        None,
        _COMMAND,
        2.0,
        (
            _use("parkCode", "停车场编码"),
            _use("pcName", "分站电脑名称"),
            _use("equipmentCode", "设备编码"),
            _use("equipmentName", "设备名称"),
            _use("equipmentType", "设备类型"),
            _use("restart", "重启操作"),
        ),
        (
            _use("barCode", "设备唯一标识码"),
            _use("status", "返回结果"),
        ),
    ),
    _interface(
        27,
        "channel",
        "通道信息上传",
        _REPORT,
        None,
        300.0,
        (
            _use("pcName", "分站电脑名称"),
            _use("channelName", "通道名称"),
            _use("channelId", "通道ID"),
            _use("channelType", "通道类型", "0 内场入口 ... 5 公共出口"),
            _use("isExit", "是否直连外场", "0=否, 1=是"),
            _use("actionType", "操作类型", "1=新增, 2=修改, 3=删除"),
        ),
    ),
    _interface(
        28,
        "blacklist",
        "黑名单下发",
        None,
        _SYNC,
        300.0,
        (
            _use("carNum", "车牌号", required=True),
            _use("parkCode", "停车场编码"),
            _use("oweMoney", "欠费金额"),
            _use(
                "carType",
                "黑名单车辆类型",
                "1 欠费车辆, 2 逃逸车辆, 3 涉案车辆, 4 其他车辆",
                enum=("1", "2", "3", "4"),
            ),
            _use("paymentStatus", "补缴状态", "1 未补缴, 2 已补缴"),
            _use("paymentTime", "补缴时间"),
            _use("refResource", "名单来源"),
            _use("Type", "操作类型", "1 增加; 2 移出"),
        ),
    ),
    _interface(
        29,
        "member",
        "会员名单下发",
        None,
        _SYNC,
        300.0,
        (
            _use("parkCode", "停车场编码"),
            _use("carNum", "车牌号"),
            _use("carColor", "车牌颜色"),
            _use("memberID", "会员编号"),
            _use("memberPhone", "会员手机号"),
            _use("memberType", "会员类型", "VIP、租车、商户会员等等"),
            _use("isAutopay", "是否开启自动扣费"),
        ),
    ),
    _interface(
        30,
        "autoPay",
        "无感支付",
        _QUERY,
        None,
        1.0,
        (
            _use("recordCode", "停车记录号", required=True),
            _use("inTime", "入场时间", _TIME_NOTE),
            _use("outTime", "出场时间", _TIME_NOTE),
            _use("carNum", "车牌号"),
            _use("carColor", "车牌颜色"),
            _use("payMoney", "应收金额"),
            _use("discountMoney", "优惠金额"),
            _use("incomeMoney", "实收金额"),
        ),
        (
            # B.34 lists only 0 未完成 / 1 已完成; C.8's payStatus adds 2 缴费超时.
            _use("payStatus", "自动扣费结果", "0 未完成 1 已完成"),
            _use("orderCode", "订单编号"),
            _use("balancePay", "订单金额"),
            _use("couponValue", "优惠券抵扣金额"),
            _use("actualPay", "实付金额"),
            _use("realPayMoney", "已缴金额"),
            _use(
                "failReason",
                "失败原因",
                "0 成功; 1 车辆未绑定; 2 未开通代扣; 3 优惠券失效; 4 余额不足; "
                "5 快捷支付失败; 6 停车记录未上传; 7 有牌非会员; 8 已由第三方支付",
            ),
            _use("discountDetail", "支付优惠", "支付优惠信息集合", items=_DISCOUNT_DETAIL),
        ),
    ),
    _interface(
        31,
        "invoice",
        "电子发票同步",
        _REPORT,
        _SYNC,
        10.0,
        (
            _use("recordCode", "停车记录号", required=True),
            _use("invoiceCode", "发票编号"),
            _use("payment", "实收金额"),
        ),
    ),
)

_BY_KEY: dict[str, Interface] = {
    key: interface for interface in INTERFACES for key in (interface.code, str(interface.number))
}


def lookup(code: str) -> Interface | None:
    """The interface named by its mnemonic ("carIn") or Table-1 number ("2"), else None."""
    return _BY_KEY.get(code)


DEFAULT_DEADLINE = 30.0
"""Seconds a lot has to answer a downlink whose row in CONTRACT §3 gives no deadline."""


def deadline_of(code: str, overrides: Mapping[str, float]) -> float:
    """Seconds a lot has to answer the downlink `code`: `overrides` ([deadlines]), else §3's table."""
    interface = lookup(code)
    if interface is None:
        return overrides.get(code, DEFAULT_DEADLINE)
    return overrides.get(interface.code, interface.deadline or DEFAULT_DEADLINE)
