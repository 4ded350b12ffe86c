#!/usr/bin/env python3
"""Builds values the way kube-apiserver stores them in etcd through a KMS plugin, independently of the Rust
code under test: Python `cryptography` (OpenSSL's AES) and Google's `protobuf` runtime.

It does only kube-apiserver's half. The plugin's half — the ciphertext of the DEK or seed, what the plugin's
Encrypt returned — comes from the real plugin (`gm-kms-plugin encrypt`) and is given to it.

The layouts, from k8s.io/apiserver (pkg/storage/value/encrypt/ and pkg/server/options/encryptionconfig/):

- KMS v1 (envelope/envelope.go): prefix `k8s:enc:kms:v1:<name>:`, the plugin's ciphertext behind a uint16
  big-endian length (cryptobyte), then the data under the 32-byte DEK: AES-GCM as aes.go writes it (12-byte
  nonce, ciphertext, 16-byte tag; AAD = the etcd key) since 1.25, AES-CBC before (16-byte IV, PKCS#7, no AAD).
- KMS v2 (envelope/kmsv2/envelope.go, kmsv2/v2/api.proto): prefix `k8s:enc:kms:v2:<name>:`, then the
  protobuf `EncryptedObject{encryptedData=1, keyID=2, encryptedDEKSource=3, annotations=4,
  encryptedDEKSourceType=5}`. AES_GCM_KEY (0): encryptedData is AES-GCM under the DEK as above.
  HKDF_SHA256_XNONCE_AES_GCM_SEED (1; aes/aes_extended_nonce.go): 32 random bytes of info, then AES-GCM under
  HKDF-SHA256-Expand(PRK = seed, info, 32) — expand only, no salt, no extract.

Usage:
    kube_values.py --live    stdin {"cases": [{"name", "shape", "dek", "plugin_ciphertext", "etcd_key",
                             "provider", "object"}]} (hex bytes); stdout {"values": [{"name", "value"}]},
                             fresh randomness for every nonce, IV and info.
    kube_values.py --check   builds the frozen set in memory and opens every value again (a self-test).
The frozen set itself is written by tests/py/gen_vectors.py (tests/vectors/kube_values.json).
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REPO = Path(__file__).resolve().parents[2]
DEV_KEY = REPO / "keys" / "dev-sm2-key.pem"
SHAPES = ("v1-gcm", "v1-cbc", "v2-key", "v2-seed")

# ------------------------------------------------------------------------------------------------------
# EncryptedObject, from a descriptor built here (no generated code, no protoc): Google's protobuf runtime
# is the independent encoder; the Rust side decodes with prost.


def _encrypted_object_class():
    f = descriptor_pb2.FileDescriptorProto(name="kube_values_kmsv2.proto", package="v2", syntax="proto3")
    enum = f.enum_type.add(name="EncryptedDEKSourceType")
    enum.value.add(name="AES_GCM_KEY", number=0)
    enum.value.add(name="HKDF_SHA256_XNONCE_AES_GCM_SEED", number=1)
    m = f.message_type.add(name="EncryptedObject")
    entry = m.nested_type.add(name="AnnotationsEntry")
    entry.options.map_entry = True
    fd = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    m.field.add(name="encryptedData", number=1, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    m.field.add(name="keyID", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    m.field.add(name="encryptedDEKSource", number=3, type=fd.TYPE_BYTES, label=fd.LABEL_OPTIONAL)
    m.field.add(name="annotations", number=4, type=fd.TYPE_MESSAGE, label=fd.LABEL_REPEATED,
                type_name=".v2.EncryptedObject.AnnotationsEntry")
    m.field.add(name="encryptedDEKSourceType", number=5, type=fd.TYPE_ENUM, label=fd.LABEL_OPTIONAL,
                type_name=".v2.EncryptedDEKSourceType")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("v2.EncryptedObject"))


EncryptedObject = _encrypted_object_class()

# ------------------------------------------------------------------------------------------------------
# kube-apiserver's layer


def gcm_seal(key: bytes, nonce: bytes, plain: bytes, aad: bytes) -> bytes:
    assert len(nonce) == 12
    return nonce + AESGCM(key).encrypt(nonce, plain, aad)


def cbc_seal(key: bytes, iv: bytes, plain: bytes) -> bytes:
    assert len(iv) == 16
    pad = padding.PKCS7(128).padder()
    padded = pad.update(plain) + pad.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


def seed_key(seed: bytes, info: bytes) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)


def kek_id_of(plugin_ciphertext: bytes) -> str:
    """The key id in the header of the plugin's format 1 (what its v2 Encrypt returns as key_id)."""
    n = plugin_ciphertext[5]
    return plugin_ciphertext[6:6 + n].decode()


def build(shape: str, dek: bytes, plugin_ct: bytes, etcd_key: str, provider: str, obj: bytes,
          rand, annotations=None) -> bytes:
    """One stored value; `rand(n)` supplies the nonce, IV or info bytes."""
    aad = etcd_key.encode()
    if shape in ("v1-gcm", "v1-cbc"):
        data = gcm_seal(dek, rand(12), obj, aad) if shape == "v1-gcm" else cbc_seal(dek, rand(16), obj)
        assert len(plugin_ct) < 65536
        return (f"k8s:enc:kms:v1:{provider}:".encode() + len(plugin_ct).to_bytes(2, "big") + plugin_ct
                + data)
    o = EncryptedObject(keyID=kek_id_of(plugin_ct), encryptedDEKSource=plugin_ct)
    for k, v in (annotations or {}).items():
        o.annotations[k] = v
    if shape == "v2-key":
        o.encryptedData = gcm_seal(dek, rand(12), obj, aad)
    elif shape == "v2-seed":
        info = rand(32)
        o.encryptedData = info + gcm_seal(seed_key(dek, info), rand(12), obj, aad)
        o.encryptedDEKSourceType = 1
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return f"k8s:enc:kms:v2:{provider}:".encode() + o.SerializeToString(deterministic=True)


def open_value(value: bytes, dek: bytes, etcd_key: str) -> bytes:
    """The reverse, in Python: the self-test that every frozen value opens to its object."""
    aad = etcd_key.encode()
    api, rest = value[:15], value[15:]
    name, _, body = rest.partition(b":")
    assert name, value[:40]
    if api == b"k8s:enc:kms:v1:":
        n = int.from_bytes(body[:2], "big")
        data = body[2 + n:]
        try:
            return AESGCM(dek).decrypt(data[:12], data[12:], aad)
        except Exception:  # noqa: BLE001 - kube-apiserver's unionTransformers: GCM, then CBC
            dec = Cipher(algorithms.AES(dek), modes.CBC(data[:16])).decryptor()
            unpad = padding.PKCS7(128).unpadder()
            return unpad.update(dec.update(data[16:]) + dec.finalize()) + unpad.finalize()
    assert api == b"k8s:enc:kms:v2:", api
    o = EncryptedObject()
    o.ParseFromString(body)
    data = o.encryptedData
    if o.encryptedDEKSourceType == 1:
        dek, data = seed_key(dek, data[:32]), data[32:]
    return AESGCM(dek).decrypt(data[:12], data[12:], aad)


# ------------------------------------------------------------------------------------------------------
# Objects as kube-apiserver stores them: Kubernetes protobuf (`k8s\0` + runtime.Unknown) for built-in types,
# JSON for custom resources. Hand-encoded protobuf: field numbers from k8s.io/api core/v1 generated.proto.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def secret_object(namespace: str, name: str, uid: str, data: dict, created: int) -> bytes:
    meta = (_field(1, name.encode()) + _field(3, namespace.encode()) + _field(5, uid.encode())
            + _field(8, _varint(1 << 3 | 0) + _varint(created)))
    secret = _field(1, meta)
    for k in sorted(data):
        secret += _field(2, _field(1, k.encode()) + _field(2, data[k]))
    secret += _field(3, b"Opaque")
    unknown = (_field(1, _field(1, b"v1") + _field(2, b"Secret")) + _field(2, secret)
               + _field(3, b"") + _field(4, b""))
    return b"k8s\x00" + unknown


def custom_object(group: str, kind: str, namespace: str, name: str, spec: dict) -> bytes:
    return (json.dumps({"apiVersion": f"{group}/v1", "kind": kind,
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec},
                       separators=(",", ":")) + "\n").encode()


# ------------------------------------------------------------------------------------------------------
# The frozen set: DEKs and seeds that the real plugin sealed once under keys/dev-sm2-key.pem
# (`gm-kms-plugin encrypt -f CONFIG < dek`), so the set is reproducible byte for byte. DEK i is
# SHA-256("gm-kms-plugin kube value DEK i").

FIXED = [
    ("73182223ec98d0452a0bbeee9a399f8d38719109a3de53b068a1713ae0915cde",
     "474d4b010114736d322d66613464373762373765336666313434007c307a022100b74e82ac8f6d58a6cda2536fa602027686bf"
     "13726bcb18343fd0a57eb0e77d10022100e5934be349c44cd6019bf4e8706f65b350d3a7d9cd47374cd542e78b9c1601cc0420"
     "5c45cfa7dbcd08d629e20f0f8d6e4a83c844ef743c16e5bab5117fc588f45ca80410f456e8abffeb21df7cc5f11f4353b44074"
     "b98ba96363cf5458825986e8db3fe43b5c80727019e93f8f37c98d3f603730930d8a0bac59c09692a95e170dee0d7ab3b2907e"
     "e2c00750cef4aab5"),
    ("595021aef83d7892a35c64f8a62878db74a7cd33eecd0d3c3222e5795ddf8421",
     "474d4b010114736d322d66613464373762373765336666313434007b307902202c68401312155b52c7de854747c51ac2e66996"
     "7edf4900dd607b2c2ddd388c94022100d9187c6f39227ad7888f908a09aa7302bd487359f2515e2b33c5f53cecfa82540420ba"
     "47d0993ffc7958852436cbdc4cfd1ecc168ecde17e6391a2aa301412c7209d0410ef67fee2b29346ec6dd6456abdb4c56078a8"
     "a0a12e128a49326bea10e2c0fbecfd9bca44b2ccb06011f673e19d42db5ee11c2b27e9468cffd9205832bad4c89e488b07a0fb"
     "1ecda37eb52352"),
    ("061773d24dfb4c4ea312102239f33b3a96eb227f6e9f1dac640cd0d5cdbf976e",
     "474d4b010114736d322d66613464373762373765336666313434007c307a0221008b81422c5a3aba903ea5978d10e4a7631a94"
     "d6fb2801636eaa7340d4511c6791022100c478cb4379f86dafccd365ab710921bb22c756b7b743289f03f2aa8f93b756f70420"
     "6fa53182f649b03253a94502b5c3f66be1122840e965f0408c7d9aa3a1cd8996041080619c3c5ad7e535d426152b47b48d1b12"
     "0a36ed85cc9af6f28c10b02e739363cf2e44b8a6c8af559dc4772279c22dba032d4918960a41c175a9959a4b19e79441ea63a8"
     "ee92e5a1a668c736"),
    ("e6bd8b0801dd2cd3559819fd8b58b796e20121e718d246b0066cc89ed29bd14f",
     "474d4b010114736d322d66613464373762373765336666313434007a3078022012722ca07141cfe0a7641aa88892527e3a62d8"
     "0670abccf2a723736ed6f66fb802204bb54b9c9fa4fc4d5e3ac0992428a1f076783c1682fcecfe9558621ec41db1f8042007c7"
     "74872743389a3ed7afbad4ccc509f5caacb1270edbf56fcf8a44b7dd9f2d04106e059868c82494307aa296d95526a09cb0bc77"
     "e26c21849b8fd8e25072d6b9f1ab65888346827a3f154b23ebc2d6f2c7d72066226d73a09129d7e7f3bd220cc38d5deec08cd3"
     "589fad27e860"),
    ("74b315622cc35272ad2047dee794cbb5aac79e7073f20ed27961d49fa19f2092",
     "474d4b010114736d322d66613464373762373765336666313434007a307802204ce951a863e5e94b9598f46ffc7508fd4a3b94"
     "adc586001987334bf047010dee0220144f489424f222051c073d3d2054c269b2ce1b462d4b3e4bede9f6acd2c5ae7e04202dd0"
     "979b773ca42346f367665561b2177f2d3623a7588d085d93b3c7b56d24180410f2f0f069e15ce387a392cffcce74ebebcced2d"
     "f348b92292bee5655781c58ff9b22008cdcf0e9054da76999b14de9d0973d766df0df88df6aa8838f7f4ef3f07828c5c3e7d72"
     "7dd68b17e657"),
    ("960bd4fc7b58d8578432fe7ce98fc904d4713dfa1b2f3d6747e8dee2b92b65b7",
     "474d4b010114736d322d66613464373762373765336666313434007b3079022100f4dd1ef01e25ff5fd9b56969286d52ed236c"
     "aea1d8a75f057f73e8509c44efde022078b95b7cebf1776c553c467ea960034e4584780dc172bea294aa4d09456e99fa042028"
     "a12f222adfe1f89dd6604f8eed5d76de4d9e6681d7f707ead3348fa96bafc804107059c813397d70b69e913d9c4d171bd551d5"
     "c163ec775d644e648809b9742778cd42466fca4d42ae959056894da68d4c8dd5a979981180f2b8a265f3bc69eb7400d7ca5e28"
     "13b532ff7ba014"),
]


def open_plugin_ciphertext_with_openssl(ct: bytes, key_pem: Path) -> bytes:
    """The plugin's format 1 opened without the plugin (docs/disaster-recovery.md, OpenSSL path): the
    wrapped data key by `openssl pkeyutl -decrypt`, then SM4-GCM with the whole header as AAD."""
    assert ct[:5] == b"GMK\x01\x01", ct[:5]
    n = ct[5]
    m = int.from_bytes(ct[6 + n:8 + n], "big")
    header, wrapped = ct[:8 + n + m], ct[8 + n:8 + n + m]
    nonce, sealed = ct[8 + n + m:20 + n + m], ct[20 + n + m:]
    r = subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", str(key_pem)], input=wrapped,
                       capture_output=True, check=True)
    dk = r.stdout
    assert len(dk) == 16, len(dk)
    dec = Cipher(algorithms.SM4(dk), modes.GCM(nonce, sealed[-16:])).decryptor()
    dec.authenticate_additional_data(header)
    return dec.update(sealed[:-16]) + dec.finalize()


def frozen_cases() -> list:
    rng = random.Random("gm-kms-plugin kube values 1")
    fixed = [(bytes.fromhex(d), bytes.fromhex(c)) for d, c in FIXED]
    big = {f"key-{i}": rng.randbytes(rng.randrange(1, 700)) for i in range(6)}
    objects = {
        "db": secret_object("default", "db-creds", "6f1c2a4e-8b3d-4c5e-9f7a-1b2c3d4e5f60",
                            {"username": b"admin", "password": b"s3cr3t-\xe4\xb8\xad"}, 1_700_000_000),
        "token": secret_object("kube-system", "bootstrap-token-abcdef", "0b6f6c1e-2d4a-4f3b-8e7d-5a6b7c8d9e0f",
                               {"token-id": b"abcdef", "token-secret": b"0123456789abcdef"}, 1_600_000_000),
        "big": secret_object("prod", "tls-bundle", "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d", big, 1_710_000_000),
        "doc": secret_object("default", "secret1", "3c1e5f7a-9b2d-4e6f-8a0c-2d4f6a8c0e1b",
                             {"password": b"correct horse battery staple"}, 1_720_000_000),
        "crd": custom_object("example.com", "Widget", "team-a", "w1", {"size": 3, "color": "blue"}),
        "crd2": custom_object("stable.example.com", "CronTab", "default", "nightly",
                              {"cronSpec": "0 3 * * *", "image": "busybox:1.36"}),
    }
    rows = [
        # name, shape, fixed index, etcd key, provider, object
        ("v1-gcm-secret", "v1-gcm", 0, "/registry/secrets/default/db-creds", "gm-kms", "db"),
        ("v1-gcm-custom-resource", "v1-gcm", 1, "/registry/example.com/widgets/team-a/w1", "gm-kms", "crd"),
        ("v1-cbc-secret", "v1-cbc", 2, "/registry/secrets/kube-system/bootstrap-token-abcdef", "kms-old",
         "token"),
        ("v1-cbc-custom-resource", "v1-cbc", 3, "/registry/stable.example.com/crontabs/default/nightly",
         "kms-old", "crd2"),
        ("v2-key-secret", "v2-key", 4, "/registry/secrets/default/db-creds", "gm-kms-v2", "db"),
        ("v2-key-big-secret-annotated", "v2-key", 4, "/registry/secrets/prod/tls-bundle", "gm-kms-v2", "big"),
        ("v2-seed-secret", "v2-seed", 5, "/registry/secrets/kube-system/bootstrap-token-abcdef", "gm-kms-v2",
         "token"),
        ("v2-seed-custom-resource", "v2-seed", 5, "/registry/example.com/widgets/team-a/w1", "gm-kms-v2", "crd"),
        # The value docs/disaster-recovery.md's commands open (tests/it/recover.rs runs them from the doc).
        ("doc-example", "v2-seed", 5, "/registry/secrets/default/secret1", "gm-kms-v2", "doc"),
    ]
    cases = []
    for name, shape, i, etcd_key, provider, obj_name in rows:
        dek, plugin_ct = fixed[i]
        obj = objects[obj_name]
        annotations = {"version.encryption.example.com": b"1"} if "annotated" in name else None
        value = build(shape, dek, plugin_ct, etcd_key, provider, obj, rng.randbytes, annotations)
        assert open_value(value, dek, etcd_key) == obj, name
        cases.append({"name": name, "shape": shape, "etcd_key": etcd_key, "provider": provider,
                      "kek_id": kek_id_of(plugin_ct), "dek": dek.hex(), "object": obj.hex(),
                      "value": value.hex()})
    return cases


def vectors() -> dict:
    """What tests/py/gen_vectors.py freezes into tests/vectors/kube_values.json."""
    for dek, ct in FIXED:
        got = open_plugin_ciphertext_with_openssl(bytes.fromhex(ct), DEV_KEY)
        assert got == bytes.fromhex(dek), "a fixed plugin ciphertext does not open to its DEK"
    return {"cases": frozen_cases()}


def live(request: dict) -> dict:
    out = []
    for c in request["cases"]:
        dek, ct, obj = (bytes.fromhex(c[k]) for k in ("dek", "plugin_ciphertext", "object"))
        value = build(c["shape"], dek, ct, c["etcd_key"], c["provider"], obj, os.urandom,
                      c.get("annotations") and {k: bytes.fromhex(v) for k, v in c["annotations"].items()})
        assert open_value(value, dek, c["etcd_key"]) == obj, c["name"]
        out.append({"name": c["name"], "value": value.hex()})
    return {"values": out}


def main() -> int:
    if sys.argv[1:] == ["--live"]:
        json.dump(live(json.load(sys.stdin)), sys.stdout)
        return 0
    if sys.argv[1:] == ["--check"]:
        n = len(vectors()["cases"])
        print(f"kube_values: {n} frozen values build and open again; the fixed plugin ciphertexts open "
              "with openssl pkeyutl + SM4-GCM")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
