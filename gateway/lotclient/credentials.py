"""A lot's account at the gateway, and the CSV file that lists several."""

from __future__ import annotations

import csv

from attrs import frozen

__all__ = ["CredentialsError", "LotCredentials", "read_credentials"]


class CredentialsError(ValueError):
    """The credentials file cannot be used; the message names the line."""


@frozen
class LotCredentials:
    """One lot's account at the gateway: its park, user name, password and key-pool secret."""

    park_code: str
    username: str
    password: str
    secret: str = ""


def read_credentials(path: str) -> list[LotCredentials]:
    """The lots of a CSV file of `park_code,username,password[,secret]`, in file order.

    A first row naming `park_code` is a header and skipped, as are blank lines
    and lines starting with `#`. Raises CredentialsError (or OSError) otherwise.
    """
    lots: list[LotCredentials] = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if not lots and cells[0].lower() == "park_code":
                continue
            if len(cells) not in (3, 4) or not all(cells[:3]):
                raise CredentialsError(
                    f"{path}:{number}: expected park_code,username,password[,secret], got {len(cells)} cells"
                )
            lots.append(LotCredentials(*cells))
    if not lots:
        raise CredentialsError(f"{path}: no lots")
    return lots
