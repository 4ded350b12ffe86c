#!/usr/bin/env python3
"""Freezes the Python oracles' answers into tests/vectors/*.json, so `cargo test` needs no Python.

Regenerate (from the repo root, after scripts/test.sh has created .venv):

    .venv/bin/python tests/py/gen_vectors.py            # rewrites tests/vectors/*.json
    .venv/bin/python tests/py/gen_vectors.py --check    # exit 1 if a file differs from the oracles' answer

The output is deterministic (fixed seeds, no clock, no OS randomness): the same oracle versions give the
same bytes, so `--check` (which the live step of scripts/test.sh runs) fails only if an oracle's answer
changed. The oracles are the same code the live tests run (tests/py/sm4gcm.py, tests/py/jdcloud_sign.py):

- tests/vectors/sm4gcm.json: SM4-GCM by Python `cryptography` (OpenSSL's SM4 and GCM, not RustCrypto).
  `cases`: key, nonce, AAD, plaintext and `sealed` (ciphertext || 16-byte tag); the Rust test seals the
  plaintext and must get `sealed`, and opens `sealed` and must get the plaintext. `rejected`: altered
  inputs that `cryptography` refuses to open; the Rust code must refuse them too.
- tests/vectors/jdcloud_sign.json: `Authorization` values from the official JD Cloud Python SDK's Signer
  (v3, and v2 with the Go SDK's three constants swapped in, see jdcloud_sign.py). Every case holds the
  whole request as signed; generated cases also name the endpoint, key id and action they were built from
  so the Rust test checks its own wire path and Host header against them.
- tests/vectors/kube_values.json: etcd values as kube-apiserver stores them through a KMS plugin (v1 AES-GCM,
  v1 AES-CBC, v2 DEK, v2 seed with HKDF), built by tests/py/kube_values.py (Python `cryptography` and
  `protobuf`) around DEK ciphertexts that the real plugin made once under keys/dev-sm2-key.pem; each case
  holds the etcd key, the value and the object `gm-kms-plugin recover` must give back.
"""

import base64
import importlib.metadata
import json
import random
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the oracles in the source tree
import jdcloud_sign  # noqa: E402
import kube_values  # noqa: E402
import sm4gcm  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
COMMAND = ".venv/bin/python tests/py/gen_vectors.py"


def header(what: str, oracle: str) -> dict:
    return {
        "about": what,
        "generated_by": f"tests/py/gen_vectors.py ({COMMAND}); do not edit by hand",
        "oracle": oracle,
    }


# ------------------------------------------------------------------------------------------------------
# SM4-GCM

PT_LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 48, 64, 100, 255, 256, 1024, 4095, 4097]
AAD_LENGTHS = [0, 1, 13, 16, 17, 20, 64, 255]


def sm4gcm_vectors() -> dict:
    rng = random.Random("gm-kms-plugin sm4gcm vectors 1")
    cases = []
    # RFC 8998 A.1 first: if the oracle were broken, this line would say so.
    cases.append({
        "name": "rfc8998-a1",
        "key": sm4gcm.RFC8998_KEY.lower(),
        "nonce": sm4gcm.RFC8998_IV.lower(),
        "aad": sm4gcm.RFC8998_AAD.lower(),
        "plaintext": sm4gcm.RFC8998_PT.lower(),
    })
    # 64 generated: every plaintext length four times, each time with another AAD length.
    for i in range(64):
        pt_len = PT_LENGTHS[i % len(PT_LENGTHS)]
        aad_len = AAD_LENGTHS[(i // len(PT_LENGTHS) + i) % len(AAD_LENGTHS)]
        cases.append({
            "name": f"pt{pt_len}-aad{aad_len}-{i}",
            "key": rng.randbytes(16).hex(),
            "nonce": rng.randbytes(12).hex(),
            "aad": rng.randbytes(aad_len).hex(),
            "plaintext": rng.randbytes(pt_len).hex(),
        })
    for c in cases:
        sealed = sm4gcm.run_case({"op": "seal", "key": c["key"], "nonce": c["nonce"], "aad": c["aad"],
                                  "data": c["plaintext"]})
        assert sealed["ok"], sealed
        c["sealed"] = sealed["data"]
        back = sm4gcm.run_case({"op": "open", "key": c["key"], "nonce": c["nonce"], "aad": c["aad"],
                                "data": c["sealed"]})
        assert back == {"ok": True, "data": c["plaintext"]}, (c["name"], back)
    assert cases[0]["sealed"] == (sm4gcm.RFC8998_CT + sm4gcm.RFC8998_TAG).lower()

    def flip(hex_s: str, index: int) -> str:
        b = bytearray(bytes.fromhex(hex_s))
        b[index] ^= 0x01
        return b.hex()

    def by_name(name: str) -> dict:
        return next(c for c in cases if c["name"].startswith(name))

    rejected = []

    def reject(name: str, base: dict, **changed):
        r = {"name": name, **{k: base[k] for k in ("key", "nonce", "aad", "sealed")}, **changed}
        res = sm4gcm.run_case({"op": "open", "key": r["key"], "nonce": r["nonce"], "aad": r["aad"],
                               "data": r["sealed"]})
        assert not res["ok"], (name, res)
        r["oracle_error"] = res["error"]
        rejected.append(r)

    a, b, e = by_name("pt33-"), by_name("pt4095-"), by_name("pt0-")
    reject("tag-last-bit", a, sealed=flip(a["sealed"], -1))
    reject("tag-first-bit", b, sealed=flip(b["sealed"], len(b["sealed"]) // 2 - 16))
    reject("ciphertext-first-bit", a, sealed=flip(a["sealed"], 0))
    reject("ciphertext-last-bit", b, sealed=flip(b["sealed"], len(b["sealed"]) // 2 - 17))
    reject("aad-bit", by_name("pt16-aad20"), aad=flip(by_name("pt16-aad20")["aad"], 3))
    reject("aad-extra-byte", a, aad=a["aad"] + "00")
    reject("aad-missing", by_name("pt17-aad64"), aad="")
    reject("nonce-bit", a, nonce=flip(a["nonce"], 11))
    reject("key-bit", a, key=flip(a["key"], 0))
    reject("empty-plaintext-tag-bit", e, sealed=flip(e["sealed"], 15))
    reject("truncated-by-one", a, sealed=a["sealed"][:-2])
    reject("shorter-than-tag", e, sealed=e["sealed"][:30])
    reject("empty", e, sealed="")

    ver = importlib.metadata.version("cryptography")
    from cryptography.hazmat.backends.openssl import backend
    return {
        **header("SM4-GCM (128-bit key, 96-bit nonce, 128-bit tag) known answers: seal and open both ways, "
                 "and altered inputs that must be refused", f"Python cryptography {ver} "
                 f"({backend.openssl_version_text()}), tests/py/sm4gcm.py"),
        "cases": cases,
        "rejected": rejected,
    }


# ------------------------------------------------------------------------------------------------------
# JD Cloud request signing. The request shapes follow the plugin's KMS client (src/provider/jdcloud).

REGION, SERVICE = "jdcloud-api", "kms"
KEYS = [
    ("ak", "sk"),
    ("B1E5AC7D6C9EAE1F1B8B4CDE5A5D0E3F", "0F3A6E2B9C1D4F8A7B5E2C6D9A1F3B7E"),
    ("JDC_0123456789ABCDEF0123456789AB", "s3cr3t+/=with-symbols_and.dots~"),
    ("AK-中文", "SK 带 空格 and unicode é"),
]
ENDPOINTS = [
    "kms.internal.cn-north-1.jdcloud-api.com",
    "kms.cn-north-1.jdcloud-api.com:443",
    "kms.cn-east-2.jdcloud-api.com:80",
    "127.0.0.1:18080",
    "localhost:8000",
]
KEY_IDS = ["3a2e5c8a-4f6b-4d1c-9f0e-2b7a1c3d5e6f", "kms-key_01.test~x", "key with space+plus:colon", "ABCdef123"]
DATES = [0, 1_568_702_828, 1_709_251_199, 1_893_456_000, 4_102_444_799]
QUERIES = ["b=2&a=1&z=%2F+x&k&=v", "keyId=k%3A1&version=2", "a=%E4%B8%AD&b=+&b=%20&a=", "x=1"]


def wire_path(version: int, key_id: str, action):
    path = "/v1/key/" + urllib.parse.quote(key_id, safe="")
    if action:
        path += (":" if version == 3 else "%3A") + action
    return path


def host_header(endpoint: str) -> str:
    host, _, port = endpoint.rpartition(":")
    return host if host and port in ("80", "443") else endpoint


def fmt_date(secs: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(secs))


def generated(version: int, n: int, rng: random.Random) -> list:
    cases = []
    for i in range(n):
        ak, sk = rng.choice(KEYS)
        endpoint = rng.choice(ENDPOINTS)
        key_id = rng.choice(KEY_IDS)
        date = fmt_date(rng.choice(DATES) + i)
        nonce = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind = rng.randrange(4)
        if kind == 0:
            method, action, body = "GET", None, ""
        elif kind == 1:
            plain = rng.randbytes(8)
            method, action = "POST", "Encrypt"
            body = json.dumps({"keyId": key_id, "plaintext": base64.b64encode(plain).decode()},
                              separators=(",", ":"))
        elif kind == 2:
            method, action = "POST", "Decrypt"
            body = f'{{"keyId": "{key_id}", "ciphertextBlob": "AAEC+/x=", "note": "中文 ✓"}}'
        else:
            method, action, body = "POST", "Encrypt", "x" * rng.randrange(5000)
        path = wire_path(version, key_id, action)
        # v2 (Go SDK): no query, as the plugin sends. v3: some with a query string.
        query = rng.choice(QUERIES) if version == 3 and i % 4 == 1 else ""
        # Every third v3 case goes through the SDK's URL entry point (host and port parsing included).
        url = None
        if version == 3 and i % 3 == 0:
            url = f"http://{endpoint}{path}" + (f"?{query}" if query else "")
        cases.append({
            "name": f"v{version}-{i}", "version": version, "method": method, "host": host_header(endpoint),
            "path": path, "query": query,
            "headers": [["Content-Type", "application/json"], ["x-jdcloud-date", date],
                        ["x-jdcloud-nonce", nonce]],
            "body": body, "ak": ak, "sk": sk, "region": REGION, "service": SERVICE, "url": url,
            "endpoint": endpoint, "key_id": key_id, "action": action,
        })
    return cases


def by_hand() -> list:
    """Paths and queries the generated set does not reach: `:` already sent as `%3A` under v3, encoded
    slashes, repeated and empty query parameters."""
    base = {
        "method": "POST", "host": "kms.cn-north-1.jdcloud-api.com", "body": '{"keyId":"k1","plaintext":"AAAA"}',
        "ak": "AK1", "sk": "SK1", "region": REGION, "service": SERVICE, "url": None,
        "headers": [["content-type", "application/json"], ["x-jdcloud-date", "20240229T235959Z"],
                    ["x-jdcloud-nonce", "6f1c2a4e-8b3d-4c5e-9f7a-1b2c3d4e5f60"]],
    }
    rows = [
        ("v3-colon-encoded", 3, "/v1/key/k1%3AEncrypt", ""),
        ("v3-colon-raw", 3, "/v1/key/k1:Encrypt", ""),
        ("v3-colon-lowercase-escape", 3, "/v1/key/k1%3aEncrypt", ""),
        ("v3-key-id-with-colon", 3, "/v1/key/a%3Ab%3ADecrypt", ""),
        ("v3-encoded-slash", 3, "/v1/key/a%2Fb:Encrypt", ""),
        ("v3-double-slash", 3, "/v1//key/k1:Encrypt", ""),
        ("v3-query-sorted", 3, "/v1/key/k1:Encrypt", "z=1&a=2&m=%3A"),
        ("v3-query-repeated", 3, "/v1/key/k1:Encrypt", "a=2&a=1&a="),
        ("v3-query-plus-and-space", 3, "/v1/key/k1:Encrypt", "q=a+b&r=a%20b"),
        ("v3-query-no-value", 3, "/v1/key/k1", "flag&x=1"),
        ("v2-colon-encoded", 2, "/v1/key/k1%3AEncrypt", ""),
        ("v2-key-id-with-colon", 2, "/v1/key/a%3Ab%3ADecrypt", ""),
        ("v2-get-key", 2, "/v1/key/k1", ""),
    ]
    out = []
    for name, version, path, query in rows:
        get = path == "/v1/key/k1"
        out.append({
            "name": name, "version": version, "method": "GET" if get else base["method"], "host": base["host"],
            "path": path, "query": query, "headers": base["headers"], "body": "" if get else base["body"],
            **{k: base[k] for k in ("ak", "sk", "region", "service", "url")},
        })
    return out


def jdcloud_vectors() -> dict:
    rng = random.Random("gm-kms-plugin jdcloud signing vectors 1")
    cases = by_hand() + generated(3, 40, rng) + generated(2, 24, rng)
    for c in cases:
        c["authorization"] = jdcloud_sign.sign(c)
    ver = importlib.metadata.version("jdcloud-sdk")
    return {
        **header("JD Cloud KMS request signatures: the Authorization header of each request, v3 "
                 "(JDCLOUD3-HMAC-SHA256) and v2 (JDCLOUD2-HMAC-SHA256)",
                 f"official JD Cloud Python SDK jdcloud-sdk {ver}, jdcloud_sdk.core.signer.Signer, "
                 "tests/py/jdcloud_sign.py"),
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------------------
# etcd values as kube-apiserver stores them (tests/py/kube_values.py)


def kube_values_vectors() -> dict:
    ver = importlib.metadata.version("cryptography")
    pb = importlib.metadata.version("protobuf")
    return {
        **header("etcd values as kube-apiserver stores them through a KMS plugin (v1 AES-GCM, v1 AES-CBC, "
                 "v2 AES_GCM_KEY, v2 HKDF_SHA256_XNONCE_AES_GCM_SEED); the DEK ciphertexts inside were made "
                 "by gm-kms-plugin encrypt under keys/dev-sm2-key.pem and open with openssl pkeyutl",
                 f"Python cryptography {ver} and protobuf {pb}, tests/py/kube_values.py"),
        **kube_values.vectors(),
    }


# ------------------------------------------------------------------------------------------------------


def render(doc: dict) -> str:
    """Top-level fields one per line, each case on its own line: diffs stay readable."""
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(v, list):
            lines.append(f"  {json.dumps(k)}: [")
            for j, c in enumerate(v):
                lines.append("    " + json.dumps(c, ensure_ascii=False) + ("," if j < len(v) - 1 else ""))
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] and not check:
        print(f"usage: {sys.argv[0]} [--check]", file=sys.stderr)
        return 2
    if sm4gcm.selftest() != 0:
        return 1
    files = {"sm4gcm.json": sm4gcm_vectors(), "jdcloud_sign.json": jdcloud_vectors(),
             "kube_values.json": kube_values_vectors()}
    stale = []
    for name, doc in files.items():
        path = VECTORS / name
        text = render(doc)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            VECTORS.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(doc['cases'])} cases"
                  + (f", {len(doc['rejected'])} rejected" if "rejected" in doc else "") + ")")
    if stale:
        print("vectors differ from what the oracles answer now (regenerate with "
              f"`{COMMAND}` and review the diff): " + ", ".join(stale), file=sys.stderr)
        return 1
    if check:
        print("vectors in tests/vectors/ match the oracles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
