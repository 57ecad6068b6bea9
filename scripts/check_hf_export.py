#!/usr/bin/python3
"""Checks what `ptrain export-hf` wrote with numpy and PyTorch alone (no ptrain code, no
transformers): an independent reader of the safetensors format (8-byte little-endian header
length, JSON header, tensor bytes tiling the data exactly), config.json against the tensors'
shapes, and GPT-2's forward pass (as Hugging Face's GPT2LMHeadModel computes it: pre-LN blocks,
Conv1D y = x·W + b, tanh GELU, LayerNorm eps from config.json, LM head tied to wte) over windows of
tokens, giving the mean cross-entropy that `ptrain eval` reports for the same windows.

Usage: check_hf_export.py HF_DIR [--tokens FILE --seq-len T] [--json]
  FILE: raw little-endian uint32 token ids; windows i = tokens[i·T : i·T + T + 1], every complete
  one. Prints {"ok", "tensors", "parameters", "loss", "windows"}; exit 0 when every check passes,
  1 with the problems on stderr otherwise.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors, spans = {}, []
    for name, e in header.items():
        b, end = e["data_offsets"]
        if e["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {e['dtype']} (export writes F32)")
        arr = np.frombuffer(data[b:end], dtype="<f4").reshape(e["shape"])
        if arr.size * 4 != end - b:
            raise ValueError(f"{name}: {end - b} bytes for shape {e['shape']}")
        tensors[name] = arr
        spans.append((b, end))
    spans.sort()
    at = 0
    for b, end in spans:
        if b != at:
            raise ValueError(f"data ranges overlap or leave a gap at byte {at}")
        at = end
    if at != len(data):
        raise ValueError(f"{len(data) - at} bytes after the last tensor")
    if (8 + n) % 8:
        raise ValueError("tensor data is not 8-byte aligned")
    return tensors, meta


def expected_shapes(cfg):
    V, T, C, L = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]
    s = {"transformer.wte.weight": [V, C], "transformer.wpe.weight": [T, C],
         "transformer.ln_f.weight": [C], "transformer.ln_f.bias": [C]}
    for l in range(L):
        p = f"transformer.h.{l}."
        s.update({p + "ln_1.weight": [C], p + "ln_1.bias": [C], p + "ln_2.weight": [C], p + "ln_2.bias": [C],
                  p + "attn.c_attn.weight": [C, 3 * C], p + "attn.c_attn.bias": [3 * C],
                  p + "attn.c_proj.weight": [C, C], p + "attn.c_proj.bias": [C],
                  p + "mlp.c_fc.weight": [C, 4 * C], p + "mlp.c_fc.bias": [4 * C],
                  p + "mlp.c_proj.weight": [4 * C, C], p + "mlp.c_proj.bias": [C]})
    return s


def forward_loss(cfg, w, windows):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    t = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in w.items()}
    C, NH, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    x_ids = torch.from_numpy(windows[:, :-1].astype(np.int64))
    y_ids = torch.from_numpy(windows[:, 1:].astype(np.int64))
    B, T = x_ids.shape
    x = t["transformer.wte.weight"][x_ids] + t["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        h = F.layer_norm(x, (C,), t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
        q, k, v = (h @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (z.view(B, T, NH, C // NH).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // NH)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
        h = F.gelu(h @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), t["transformer.ln_f.weight"], t["transformer.ln_f.bias"], eps)
    logits = x @ t["transformer.wte.weight"].T  # the tied head
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_ids.reshape(-1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("--tokens")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    problems = []
    cfg = json.load(open(os.path.join(a.hf_dir, "config.json")))
    tensors, meta = read_safetensors(os.path.join(a.hf_dir, "model.safetensors"))
    if meta.get("format") != "pt":
        problems.append(f"__metadata__.format is {meta.get('format')!r}, transformers wants 'pt'")
    if cfg.get("model_type") != "gpt2" or cfg.get("activation_function") != "gelu_new":
        problems.append("config.json is not a gpt2 with gelu_new")
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in tensors:
            problems.append(f"missing tensor {name}")
        elif list(tensors[name].shape) != shape:
            problems.append(f"{name}: shape {list(tensors[name].shape)}, config.json implies {shape}")
    for name in tensors:
        if name not in want:
            problems.append(f"unexpected tensor {name}")
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
              "special_tokens_map.json", "generation_config.json"):
        if not os.path.exists(os.path.join(a.hf_dir, f)):
            problems.append(f"missing {f}")
    vocab = json.load(open(os.path.join(a.hf_dir, "vocab.json")))
    if len(vocab) != cfg["vocab_size"]:
        problems.append(f"vocab.json has {len(vocab)} tokens, config.json vocab_size {cfg['vocab_size']}")
    result = {"tensors": len(tensors), "parameters": int(sum(t.size for t in tensors.values()))}
    if a.tokens and not problems:
        ids = np.fromfile(a.tokens, dtype="<u4")
        T = a.seq_len
        n = (len(ids) - 1) // T
        windows = np.stack([ids[i * T:i * T + T + 1] for i in range(n)])
        result["loss"] = forward_loss(cfg, tensors, windows)
        result["windows"] = n
    result["ok"] = not problems
    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps(result) if a.json else result)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
