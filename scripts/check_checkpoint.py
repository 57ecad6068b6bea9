#!/usr/bin/python3
"""Checks a ptrain checkpoint with h5py alone (no ptrain code): an independent reader of the
format in docs/contracts.md "Checkpoint (HDF5)" and docs/formats.md.

Checks: the checksum block (the first 512 bytes: magic, format_version, length, CRC32C of the
rest of the file; a file without it, written before it existed, is reported and accepted), root
attribute names and types (variable-length UTF-8 strings, int32 format_version,
int64 step/tokens_seen), the layout hash recomputed from the /model shapes in GPT-2 layout order,
float32 tensors with a uint32 `crc32c` attribute matching the CRC32C of their little-endian C-order
bytes, /optimizer/{m,v} mirroring /model, /tokenizer as uint8 JSON, /data's seed/epoch/position.

Usage: check_checkpoint.py CKPT [--tensor NAME]... [--json]
  CKPT is a checkpoint.h5 or its directory. With --tensor only the named /model tensors (and
  their moments) are checksummed; otherwise every tensor is. Exit 0 when all checks pass, 1 with
  the problems on stderr otherwise. Needs h5py and numpy (Debian: python3-h5py, /usr/bin/python3).
  The CRC32C here is pure Python (a few MB/s): a large checkpoint takes minutes.

As a module, write_checksum_block(path) rewrites a file's block after an edit through h5py (tests
that damage a checkpoint on purpose and want ptrain's checks behind the block to see it).
"""
import argparse
import hashlib
import json
import os
import re
import sys

import h5py
import numpy as np

FORMAT = "ptrain-checkpoint"
FORMAT_VERSION = 1
LAYER_FIELDS = [
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
]


def _crc_table():
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return [int(x) for x in table]


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), reflected, init/xorout 0xFFFFFFFF: crc32c(b"123456789") == 0xE3069283."""
    c = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


BLOCK_BYTES = 512
BLOCK_MAGIC = b"ptrain-checkpoint-checksum"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def crc32c_file(path, offset):
    """CRC32C and length of the bytes of `path` from `offset` on."""
    c = 0xFFFFFFFF
    t = _TABLE
    n = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            for b in chunk:
                c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF, n


def check_checksum_block(path):
    """(problem or None, summary): the block of docs/formats.md "The checksum block"."""
    with open(path, "rb") as f:
        head = f.read(BLOCK_BYTES)
    if head[:8] == HDF5_SIGNATURE:
        return None, "absent (written before the checksum block)"
    if not head.startswith(BLOCK_MAGIC + b"\n") or len(head) < BLOCK_BYTES:
        return "neither the checksum block nor the HDF5 signature at its start", None
    text, _, pad = head.partition(b"\n\x00")
    if pad.strip(b"\x00"):
        return "the checksum block has bytes after its fields that are not NUL", None
    m = re.fullmatch(rb"ptrain-checkpoint-checksum\nformat_version (\d+)\nlength (\d+)\n"
                     rb"crc32c 0x([0-9a-f]{8})", text)
    if not m:
        return f"the checksum block does not parse: {text!r}", None
    version, length, crc = int(m.group(1)), int(m.group(2)), int(m.group(3), 16)
    if version != FORMAT_VERSION:
        return f"the checksum block says format_version {version}, this script reads {FORMAT_VERSION}", None
    actual, n = crc32c_file(path, BLOCK_BYTES)
    if (actual, n) != (crc, length):
        return (f"damaged or truncated: its checksum block expects crc32c {crc:#010x} over {length} "
                f"bytes, the file has crc32c {actual:#010x} over {n} bytes"), None
    return None, f"crc32c {crc:#010x} over {length} bytes"


def write_checksum_block(path):
    """Rewrites the checksum block of `path`, a file written with one, over its current bytes."""
    with open(path, "rb") as f:
        head = f.read(BLOCK_BYTES)
    if not head.startswith(BLOCK_MAGIC):
        raise ValueError(f"{path} has no checksum block to rewrite")
    crc, n = crc32c_file(path, BLOCK_BYTES)
    text = (BLOCK_MAGIC + f"\nformat_version {FORMAT_VERSION}\nlength {n}\ncrc32c {crc:#010x}\n"
            .encode()).ljust(BLOCK_BYTES, b"\x00")
    with open(path, "r+b") as f:
        f.write(text)


def layout_order(name):
    if name == "transformer.wte.weight":
        return (0, 0, 0)
    if name == "transformer.wpe.weight":
        return (1, 0, 0)
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if m and m.group(2) in LAYER_FIELDS:
        return (2, int(m.group(1)), LAYER_FIELDS.index(m.group(2)))
    if name == "transformer.ln_f.weight":
        return (3, 0, 0)
    if name == "transformer.ln_f.bias":
        return (3, 0, 1)
    raise ValueError(f"unexpected tensor name {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--tensor", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = args.ckpt
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.h5")
    problems = []

    def bad(msg):
        problems.append(f"{path}: {msg}")

    try:
        block_problem, block = check_checksum_block(path)
    except OSError as e:
        print(f"{path}: cannot read: {e}", file=sys.stderr)
        return 1
    if block_problem:
        # As ptrain does: a file whose block does not match is not handed to HDF5.
        print(f"{path}: {block_problem}", file=sys.stderr)
        return 1
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        print(f"{path}: cannot open: {e}", file=sys.stderr)
        return 1
    summary = {"file": path, "checksum_block": block}
    with f:
        # Root attributes and their stored types.
        strings = ["format", "config_yaml", "layout_hash", "ptrain_version", "created_utc"]
        for name in strings:
            if name not in f.attrs:
                bad(f"attribute {name} is missing")
                continue
            tid = f.attrs.get_id(name).get_type()
            if not (isinstance(tid, h5py.h5t.TypeStringID) and tid.is_variable_str()
                    and tid.get_cset() == h5py.h5t.CSET_UTF8):
                bad(f"attribute {name} is not a variable-length UTF-8 string")
        ints = {"format_version": np.int32, "step": np.int64, "tokens_seen": np.int64}
        for name, dt in ints.items():
            if name not in f.attrs:
                bad(f"attribute {name} is missing")
                continue
            got = f.attrs.get_id(name).dtype
            if got != np.dtype(dt).newbyteorder("<") and got != np.dtype(dt):
                bad(f"attribute {name} is {got}, expected {np.dtype(dt)}")
        if problems:
            return report(problems, summary, args.json)
        fmt = f.attrs["format"]
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            bad(f"format is {fmt!r}, expected {FORMAT!r}")
        if int(f.attrs["format_version"]) != FORMAT_VERSION:
            bad(f"format_version {int(f.attrs['format_version'])}, this script reads {FORMAT_VERSION}")
        summary["step"] = int(f.attrs["step"])
        summary["tokens_seen"] = int(f.attrs["tokens_seen"])

        # Layout: /model names and shapes → the hash of "name\tshape\toffset\n" lines.
        if "model" not in f:
            bad("group /model is missing")
            return report(problems, summary, args.json)
        names = sorted(f["model"].keys(), key=layout_order)
        lines, offset = [], 0
        for n in names:
            shape = f["model"][n].shape
            lines.append(f"{n}\t{','.join(str(d) for d in shape)}\t{offset}\n")
            offset += int(np.prod(shape))
        h = hashlib.sha256("".join(lines).encode()).hexdigest()
        stored = f.attrs["layout_hash"]
        stored = stored.decode() if isinstance(stored, bytes) else stored
        if h != stored:
            bad(f"layout_hash {stored} but the /model tensors hash to {h}")
        summary["parameters"] = offset
        summary["layout_hash"] = h

        # Tensors and their checksums.
        check = args.tensor or names
        for n in args.tensor:
            if n not in names:
                bad(f"no tensor model/{n}")
        checked = 0
        for group in ["model", "optimizer/m", "optimizer/v"]:
            if group not in f:
                bad(f"group /{group} is missing")
                continue
            if sorted(f[group].keys(), key=layout_order) != names:
                bad(f"/{group} does not hold the same tensors as /model")
            for n in check:
                if n not in f[group]:
                    bad(f"tensor {group}/{n} is missing")
                    continue
                ds = f[group][n]
                if ds.dtype != np.dtype("<f4"):
                    bad(f"tensor {group}/{n} is {ds.dtype}, expected float32")
                    continue
                if ds.shape != f["model"][n].shape:
                    bad(f"tensor {group}/{n} has shape {ds.shape}, /model has {f['model'][n].shape}")
                if "crc32c" not in ds.attrs:
                    bad(f"tensor {group}/{n} has no crc32c attribute")
                    continue
                if ds.attrs.get_id("crc32c").dtype not in (np.dtype("<u4"), np.dtype("uint32")):
                    bad(f"tensor {group}/{n}: crc32c is {ds.attrs.get_id('crc32c').dtype}, expected uint32")
                data = np.ascontiguousarray(ds[()], dtype="<f4").tobytes()
                want, got = int(ds.attrs["crc32c"]), crc32c(data)
                if want != got:
                    bad(f"tensor {group}/{n} fails its checksum (stored {want:#010x}, computed {got:#010x})")
                checked += 1
        summary["tensors_checked"] = checked

        # Tokenizer and data state.
        if "tokenizer" not in f or f["tokenizer"].dtype != np.uint8 or len(f["tokenizer"].shape) != 1:
            bad("/tokenizer is missing or not a 1-D uint8 dataset")
        else:
            try:
                tok = json.loads(bytes(f["tokenizer"][()]).decode("utf-8"))
                summary["tokenizer"] = tok.get("kind", tok.get("type", "?")) if isinstance(tok, dict) else "?"
            except ValueError as e:
                bad(f"/tokenizer is not JSON: {e}")
        if "data" not in f:
            bad("group /data is missing")
        else:
            d = f["data"]
            for k in ["seed", "epoch", "position"]:
                if k not in d.attrs and k not in d:
                    bad(f"/data has no {k}")
            summary["data"] = {k: int(d.attrs[k]) for k in ["seed", "epoch", "position"] if k in d.attrs}
    return report(problems, summary, args.json)


def report(problems, summary, as_json):
    summary["ok"] = not problems
    summary["problems"] = problems
    if as_json:
        print(json.dumps(summary))
    else:
        for p in problems:
            print(p, file=sys.stderr)
        if not problems:
            print(f"ok {summary['file']}: step {summary.get('step')}, "
                  f"{summary.get('tensors_checked', 0)} tensors checked")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
