#!/usr/bin/env python3
"""Signs requests with the official JD Cloud Python SDK's own Signer, for the Rust signer's cross-check.

Reads a JSON array of cases on stdin and prints a JSON array of `Authorization` header values, one per
case, in order. A case:

    {"version": 3 or 2, "method": "POST", "host": "kms.example.com", "path": "/v1/key/k:Encrypt",
     "query": "", "headers": [["content-type", "application/json"], ["x-jdcloud-date", "..."],
     ["x-jdcloud-nonce", "..."]], "body": "...", "ak": "...", "sk": "...",
     "region": "jdcloud-api", "service": "kms", "url": optional full URL}

With "url" the SDK's `Signer.sign` is used (it derives host, port, path and query from the URL as the SDK's
client does); without it `Signer.signV3` gets host, path and query as given.

Version 2: the Python SDK only implements JDCLOUD3. JDCLOUD2 (JD Cloud's Go SDK) is the same algorithm with
other constants (`JDCLOUD2-HMAC-SHA256`, key prefix `JDCLOUD2`, terminator `jdcloud2_request`, all three
read from the Go SDK's core/Signer.go), so for version 2 this script swaps those three constants in the
SDK's `const` module for the call. That is exact only where the Go SDK's normalisation equals the Python
one: a path already encoded as the Go SDK encodes it, no query, header values without runs of spaces -
which is what the KMS requests look like. The Rust tests keep version-2 cases within those bounds.
"""

import json
import sys

from jdcloud_sdk.core import const
from jdcloud_sdk.core.credential import Credential
from jdcloud_sdk.core.logger import FATAL, Logger
from jdcloud_sdk.core.signer import Signer

V2_CONSTANTS = {
    "JDCLOUD3_ALGORITHM": "JDCLOUD2-HMAC-SHA256",
    "JDCLOUD3": "JDCLOUD2",
    "JDCLOUD3_REQUEST": "jdcloud2_request",
}


def sign(case):
    headers = {}
    for name, value in case["headers"]:
        headers[name] = value
    credential = Credential(case["ak"], case["sk"])
    signer = Signer(Logger(FATAL))  # FATAL: the signer logs canonical requests at INFO on stdout
    saved = {}
    if case["version"] == 2:
        for name, value in V2_CONSTANTS.items():
            saved[name] = getattr(const, name)
            setattr(const, name, value)
    elif case["version"] != 3:
        raise ValueError("version must be 2 or 3")
    try:
        if case.get("url"):
            signer.sign(method=case["method"], service=case["service"], region=case["region"],
                        uri=case["url"], headers=headers, data=case["body"],
                        credential=credential, security_token="")
        else:
            signer.signV3(method=case["method"], service=case["service"], region=case["region"],
                          host=case["host"], path=case["path"], query=case["query"], headers=headers,
                          data=case["body"], credential=credential, security_token="")
    finally:
        for name, value in saved.items():
            setattr(const, name, value)
    return headers[const.JDCLOUD_AUTH]


def main():
    cases = json.load(sys.stdin)
    json.dump([sign(c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()
