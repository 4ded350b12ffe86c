#!/usr/bin/env python3
"""Independent SM4-GCM oracle for the Rust tests: Python `cryptography` (OpenSSL's SM4 + GCM), not RustCrypto.

stdin:  {"cases": [{"op": "seal"|"open", "key": hex, "nonce": hex, "aad": hex, "data": hex}, ...]}
stdout: {"results": [{"ok": true, "data": hex} | {"ok": false, "error": "..."}, ...]}, one per case, in order.
seal returns ciphertext || 16-byte tag; open takes the same and returns the plaintext, or ok:false
(error "InvalidTag") when authentication fails.

--selftest checks the RFC 8998 Appendix A.1 vector both ways (and a flipped tag bit) and exits non-zero
if anything disagrees, so a broken oracle cannot make a cross-check pass.
"""

import json
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TAG_LEN = 16


def seal(key: bytes, nonce: bytes, aad: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    ct = enc.update(data) + enc.finalize()
    return ct + enc.tag


def open_(key: bytes, nonce: bytes, aad: bytes, data: bytes) -> bytes:
    if len(data) < TAG_LEN:
        raise ValueError(f"input of {len(data)} bytes is shorter than the {TAG_LEN}-byte tag")
    ct, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(ct) + dec.finalize()


def run_case(case: dict) -> dict:
    try:
        op = case["op"]
        args = [bytes.fromhex(case.get(f, "")) for f in ("key", "nonce", "aad", "data")]
        if op == "seal":
            out = seal(*args)
        elif op == "open":
            out = open_(*args)
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"ok": True, "data": out.hex()}
    except InvalidTag:
        return {"ok": False, "error": "InvalidTag"}
    except (ValueError, KeyError, TypeError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


# RFC 8998 Appendix A.1 (SM4-GCM).
RFC8998_KEY = "0123456789ABCDEFFEDCBA9876543210"
RFC8998_IV = "00001234567800000000ABCD"
RFC8998_AAD = "FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2"
RFC8998_PT = (
    "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
    "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
)
RFC8998_CT = (
    "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
)
RFC8998_TAG = "83DE3541E4C2B58177E065A9BF7B62EC"


def selftest() -> int:
    pt, sealed = bytes.fromhex(RFC8998_PT), bytes.fromhex(RFC8998_CT + RFC8998_TAG)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])

    def case(op, data):
        return run_case({"op": op, "key": RFC8998_KEY, "nonce": RFC8998_IV, "aad": RFC8998_AAD,
                         "data": data.hex()})

    failures = []
    if case("seal", pt) != {"ok": True, "data": sealed.hex()}:
        failures.append("seal does not give the RFC 8998 A.1 ciphertext and tag")
    if case("open", sealed) != {"ok": True, "data": pt.hex()}:
        failures.append("open does not give the RFC 8998 A.1 plaintext")
    if case("open", tampered) != {"ok": False, "error": "InvalidTag"}:
        failures.append("a flipped tag bit is not rejected")
    for f in failures:
        print(f"sm4gcm selftest FAILED: {f}", file=sys.stderr)
    if not failures:
        print("sm4gcm selftest ok (RFC 8998 A.1)")
    return 1 if failures else 0


def main() -> int:
    if sys.argv[1:] == ["--selftest"]:
        return selftest()
    if sys.argv[1:]:
        print(f"usage: {sys.argv[0]} [--selftest]  (cases as JSON on stdin)", file=sys.stderr)
        return 2
    req = json.load(sys.stdin)
    json.dump({"results": [run_case(c) for c in req["cases"]]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
