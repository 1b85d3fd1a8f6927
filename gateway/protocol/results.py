"""Result codes: table B.4 of the standard as written, and the contract's 9006-9010."""

from __future__ import annotations

import enum


class Result(enum.Enum):
    """A `resultCode` of a response envelope, with the standard's own description."""

    OK = ("0000", "操作成功")
    FAILED = ("9999", "操作失败")
    TOKEN_INVALID = ("9000", "Token 失效，重新登录")
    NO_SUCH_INTERFACE = ("9001", "该接口已关闭或不存在")
    MALFORMED = ("9002", "报文格式错误")
    BAD_CREDENTIALS = ("9003", "用户名密码错误")
    EMPTY_BODY = ("9004", "报文体不能为空")
    EMPTY_MESSAGE = ("9005", "报文为空字符串")
    BAD_SIGNATURE = ("9006", "数据签名错误")
    TOO_MANY_REPEATS = ("9007", "重复请求次数超过限制")
    NOT_CONNECTED = ("9008", "停车场未连接")
    DEADLINE = ("9009", "未在时限内应答")
    FIELD_INVALID = ("9010", "字段无效")
    NO_SUCH_RECORD = ("9101", "传入的 recordCode 不存在")
    NO_SPACES = ("9102", "总车位数为 0 或小于 0，不予处理")
    NO_ONLINE_ORDER = ("9103", "获取在线订单失败")
    NO_SUCH_PARK = ("9104", "该账户对应的停车场不存在")
    TOO_MANY_FREE = ("9105", "剩余车位数大于总车位数")
    IMAGE_MISMATCH = ("9201", "上传的图片数量与描述信息不符")
    NO_SUCH_FILE = ("9301", "文件不存在")
    NOT_REGISTERED = ("9501", "非注册用户，无法使用在线支付功能")
    NOT_A_MEMBER = ("9111", "用户为非会员用户")
    NO_SUCH_ORDER = ("9112", "在线订单不存在")

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text

    def message(self, detail: str = "") -> str:
        """The `resultMessage`: the standard's text, then the detail; at most 200 characters (B.3)."""
        if not detail:
            return self.text
        return f"{self.text}: {detail}"[:200]

    @classmethod
    def from_code(cls, code: str) -> Result | None:
        """The result with this four-digit code, or None."""
        return _BY_CODE.get(code)


_BY_CODE = {result.code: result for result in Result}

RESULT_OK = Result.OK
"""`Result.OK` as a module global, for per-request checks: an enum member costs an
attribute lookup through its class on each use."""
