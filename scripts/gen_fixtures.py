#!/usr/bin/python3
"""Golden fixtures for ptrain's model tests, computed by PyTorch.

Run with the Python that sees Debian's python3-torch:
    /usr/bin/python3 scripts/gen_fixtures.py [--out DIR] [--only NAME ...] [--list]
Default DIR is tests/fixtures next to this script. The output is deterministic (fixed seeds, one
thread): rerunning it reproduces the committed files bit for bit on the same torch version. The C++
tests (tests/worker/test_model.cpp) load the committed files and, when torch is importable, also run
this script into a temporary folder and compare against the live output.

The model is GPT-2 written out here from torch primitives (no nn.Module), over a dict of tensors
with Hugging Face GPT-2 names and shapes: y = x·W + b with W of shape (in, out); c_attn columns are
[Q | K | V], head h owning columns h·hd..(h+1)·hd of each block; LayerNorm eps 1e-5 via
F.layer_norm; GELU via F.gelu(approximate="tanh"); causal softmax(q·kᵀ/√hd)·v; no dropout; the LM
head tied to transformer.wte.weight; padded vocabulary columns (V..Vp-1) of the logits are -inf
(masked_fill, so their gradient is exactly 0); loss = F.cross_entropy, the mean over all B·T targets.

=====================================================================================================
FILE FORMAT (FIXTURE_VERSION = 1). Each fixture NAME is two files:
  NAME.json  the manifest (UTF-8 JSON object)
  NAME.bin   the blob: the tensors' raw bytes, little-endian, C order, concatenated
Manifest keys:
  "format": "ptrain-fixture"
  "version": 1              -- readers must refuse any other value ("rerun scripts/gen_fixtures.py")
  "kind": "gpt" | "trajectory"
  "name": NAME, "blob": "NAME.bin" (relative to the manifest's folder), "blob_bytes": size
  "generator": "scripts/gen_fixtures.py", "torch_version": torch.__version__
  "compute_dtype": "float64" | "float32"   -- the dtype torch computed in (values stored as float32)
  "config": {"V", "Vp", "T", "L", "NH", "C", "B", "seed"}   -- model dims (Vp = rows of wte) and batch
  "tensors": [{"name", "dtype": "float32"|"int32"|"float64", "shape": [...], "offset": byte offset
               into the blob, "nbytes"}, ...]
  "optim": {...}                           -- trajectory only, see below

kind "gpt" (gpt_*.json): one forward/backward of the mean loss, computed in float64 from float32
weights (so the reference carries no fp32 rounding of its own). Tensors:
  "inputs"          int32   (B, T+1)   windows; inputs = [:, :T], targets = [:, 1:]
  "param/<hf name>" float32 full shape every parameter (padded wte rows are 0)
  "logits"          float32 (B, T, Vp) padded columns -inf
  "loss"            float32 ()         mean cross-entropy over the B·T targets
  "grad/<hf name>"  float32 full shape d(loss)/d(param) of the MEAN loss (grad_scale = 1/(B·T));
                                       padded wte rows exactly 0

kind "trajectory" (trajectory_v1.json): 10 optimizer steps in float32 with torch's own
torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and torch.optim.lr_scheduler.LambdaLR.
  "optim": {"steps": S, "lr", "min_lr", "warmup_steps": W, "weight_decay", "beta1", "beta2", "eps",
            "grad_clip", "schedule": "<the formula below>"}
  Step t = 0..S-1 does, in this order:
    1. loss_t = mean cross-entropy of batch t (inputs[t], one forward over all B windows) at the
       current weights; gradient of that MEAN loss (C++: Gpt::forward_backward with grads zeroed
       and grad_scale = 1/(B·T)).
    2. grad_norm_t = clip_grad_norm_(all parameters, grad_clip): global L2 norm over every gradient
       (the tied wte counted once); gradients are multiplied by min(1, grad_clip/(grad_norm_t+1e-6)).
    3. AdamW step with lr_t (t counted from 1 inside AdamW): weight decay weight_decay on every
       tensor with >= 2 dims (wte, wpe, all .weight matrices), 0 on 1-D tensors (biases, LayerNorm).
    4. scheduler step.
  lr_t = lr·(t+1)/W for t < W; else min_lr + 0.5·(lr − min_lr)·(1 + cos(π·(t − W)/(S − W))).
  Tensors:
  "inputs"            int32   (S, B, T+1)  batch t = inputs[t]
  "param0/<hf name>"  float32 full shape   weights before step 0 (padded wte rows 0)
  "loss"              float32 (S)          loss_t, before step t's update
  "grad_norm"         float32 (S)          grad_norm_t (pre-clip total norm)
  "lr"                float64 (S)          lr_t as the optimizer used it
  "final/<hf name>"   float32 full shape   weights after all S steps
  A replay in C++ should match loss_t within ~1e-5 relative and the final weights within a small
  relative L2 per tensor (fp32 summation orders differ between torch and ptrain).

kind "bert" (bert_*.json): BERT as Hugging Face BertForMaskedLM, written out here from torch
primitives: nn.Linear weights (out, in), y = x·Wᵀ + b; embeddings LN(word + token_type[0] +
position); post-LN blocks; F.gelu (exact erf); LayerNorm eps 1e-12; bidirectional softmax; the MLM
head LN(gelu(dense(h))) · word_embeddingsᵀ + cls.predictions.bias; loss = F.cross_entropy with
ignore_index -100 (mean over predicted positions). The masks come from mlm_example() below, a copy
of common/data/mlm.cpp that the C++ test compares bitwise. config adds "arch": "bert", "V" is the
model vocabulary (tokenizer's + 4 special tokens), "run_seed", "step". Tensors:
  "windows"         int32   (B, T+1)   text token ids of each window (< V - 4)
  "window_ids"      int64   (B)        the window indices that key the masks
  "inputs"          int32   (B, T)     [CLS] masked text [SEP]
  "labels"          int32   (B, T)     target ids, -100 where not predicted
  "param/<hf name>", "logits" (B, T, Vp), "loss", "grad/<hf name>" as for kind "gpt"
kind "bert_cls" (bert_cls.json): BertForSequenceClassification on padded sequences: the encoder
above with the key-padding mask (padded keys -inf before the softmax), pooler tanh(dense(h[:, 0])),
classifier; loss = mean cross-entropy over the B sequences. config adds "num_labels". Tensors
"inputs" int32 (B, T) (padded with [PAD]), "valid" int32 (B, T) (1 = real token), "labels" int32 (B),
"param/…", "logits" (B, K), "loss", "grad/…".
kind "bert_trajectory" (bert_trajectory_v1.json): 10 AdamW steps as "trajectory" on the MLM
loss; batch t is windows[t] masked with step t and window ids t·B + b. Tensors "windows"
(S, B, T+1), "inputs"/"labels" (S, B, T), "param0/…", "loss", "grad_norm", "lr", "final/…".
=====================================================================================================
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

FIXTURE_VERSION = 1

# name, V, Vp, T, L, NH, C, B, seed. Odd sizes on purpose: C not a multiple of 8, T not a power of
# two, n_head 3 and 5, a padded and an unpadded V=257, and T > 64 (several attention row blocks,
# the last one partial).
GPT_CONFIGS = [
    ("gpt_odd", 257, 320, 13, 2, 3, 36, 2, 11),
    ("gpt_unpadded", 257, 257, 16, 1, 5, 40, 3, 12),
    ("gpt_long", 61, 64, 150, 2, 2, 24, 2, 13),
]

TRAJECTORY = dict(name="trajectory_v1", V=257, Vp=320, T=13, L=2, NH=3, C=36, B=4, seed=21,
                  steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=3, weight_decay=0.1, beta1=0.9,
                  beta2=0.95, eps=1e-8, grad_clip=1.2)

SCHEDULE_TEXT = ("lr_t = lr*(t+1)/W for t < W; else min_lr + 0.5*(lr - min_lr)*"
                 "(1 + cos(pi*(t - W)/(S - W))); t = 0..S-1")


def param_specs(V, Vp, T, L, NH, C):
    """(name, shape) in ptrain's flat-layout order (common/tensor/param_layout.cpp)."""
    specs = [("transformer.wte.weight", (Vp, C)), ("transformer.wpe.weight", (T, C))]
    for l in range(L):
        p = f"transformer.h.{l}."
        specs += [
            (p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (C, 4 * C)), (p + "mlp.c_fc.bias", (4 * C,)),
            (p + "mlp.c_proj.weight", (4 * C, C)), (p + "mlp.c_proj.bias", (C,)),
        ]
    specs += [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]
    return specs


def make_params(gen, V, Vp, T, L, NH, C, scale):
    """float32 weights. scale='init': GPT-2 initialisation; scale='rich': larger, non-trivial
    LayerNorm weights and biases so every path of the gradient carries signal."""
    P = {}
    for name, shape in param_specs(V, Vp, T, L, NH, C):
        if name.endswith(".bias"):
            std = 0.0 if scale == "init" else 0.05
            t = torch.randn(shape, generator=gen) * std
        elif ".ln_" in name:
            std = 0.0 if scale == "init" else 0.1
            t = 1.0 + torch.randn(shape, generator=gen) * std
        else:
            std = 0.02 if scale == "init" else 0.08
            if name.endswith("c_proj.weight"):
                std = std / math.sqrt(2 * L)
            t = torch.randn(shape, generator=gen) * std
        if name == "transformer.wte.weight":
            t[V:] = 0.0
        P[name] = t.to(torch.float32).contiguous()
    return P


def gpt_forward(P, idx, V, Vp, L, NH, C):
    """logits (B, T, Vp) with padded columns -inf."""
    B, T = idx.shape
    hd = C // NH
    wte = P["transformer.wte.weight"]
    x = wte[idx] + P["transformer.wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        p = f"transformer.h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps=1e-5)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, NH, hd).transpose(1, 2)
        k = k.view(B, T, NH, hd).transpose(1, 2)
        v = v.view(B, T, NH, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + (y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"])
        h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + (h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps=1e-5)
    logits = x @ wte.t()
    if Vp > V:
        pad = torch.zeros(Vp, dtype=torch.bool)
        pad[V:] = True
        logits = logits.masked_fill(pad, float("-inf"))
    return logits


def mean_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Blob:
    def __init__(self):
        self.parts, self.entries, self.offset = [], [], 0

    def add(self, name, array, dtype):
        a = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        self.entries.append({"name": name, "dtype": np.dtype(dtype).name, "shape": list(a.shape),
                             "offset": self.offset, "nbytes": len(data)})
        self.parts.append(data)
        self.offset += len(data)

    def write(self, out_dir, name, manifest):
        blob = b"".join(self.parts)
        manifest.update({"format": "ptrain-fixture", "version": FIXTURE_VERSION, "name": name,
                         "blob": name + ".bin", "blob_bytes": len(blob),
                         "generator": "scripts/gen_fixtures.py",
                         "torch_version": torch.__version__, "tensors": self.entries})
        with open(os.path.join(out_dir, name + ".bin"), "wb") as f:
            f.write(blob)
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        return len(blob)


def gen_gpt(out_dir, name, V, Vp, T, L, NH, C, B, seed):
    gen = torch.Generator().manual_seed(seed)
    P32 = make_params(gen, V, Vp, T, L, NH, C, "rich")
    windows = torch.randint(0, V, (B, T + 1), generator=gen, dtype=torch.int64)
    P = {k: v.to(torch.float64).requires_grad_(True) for k, v in P32.items()}
    logits = gpt_forward(P, windows[:, :T], V, Vp, L, NH, C)
    loss = mean_loss(logits, windows[:, 1:])
    loss.backward()
    blob = Blob()
    blob.add("inputs", windows.numpy(), np.int32)
    for k, _ in param_specs(V, Vp, T, L, NH, C):
        blob.add("param/" + k, P32[k].numpy(), np.float32)
    blob.add("logits", logits.detach().numpy(), np.float32)
    blob.add("loss", np.array(loss.item()), np.float32)
    for k, _ in param_specs(V, Vp, T, L, NH, C):
        g = P[k].grad
        if k == "transformer.wte.weight":
            assert bool((g[V:] == 0).all()), "padded wte rows must have zero gradient"
        blob.add("grad/" + k, g.numpy(), np.float32)
    config = dict(V=V, Vp=Vp, T=T, L=L, NH=NH, C=C, B=B, seed=seed)
    n = blob.write(out_dir, name, {"kind": "gpt", "compute_dtype": "float64", "config": config})
    print(f"{name}: loss {loss.item():.6f}, {n} bytes", file=sys.stderr)


def make_optimizer(P, names, c):
    """torch's AdamW (decay on tensors with >= 2 dims) and LambdaLR warmup + cosine (SCHEDULE_TEXT)."""
    S, W = c["steps"], c["warmup_steps"]
    decay = [P[k] for k in names if P[k].dim() >= 2]
    no_decay = [P[k] for k in names if P[k].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"])

    def factor(t):
        if t < W:
            return (t + 1) / W
        lr_t = c["min_lr"] + 0.5 * (c["lr"] - c["min_lr"]) * (1 + math.cos(math.pi * (t - W) / (S - W)))
        return lr_t / c["lr"]

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def gen_trajectory(out_dir, c):
    V, Vp, T, L, NH, C, B = c["V"], c["Vp"], c["T"], c["L"], c["NH"], c["C"], c["B"]
    S, W = c["steps"], c["warmup_steps"]
    gen = torch.Generator().manual_seed(c["seed"])
    P0 = make_params(gen, V, Vp, T, L, NH, C, "init")
    batches = torch.randint(0, V, (S, B, T + 1), generator=gen, dtype=torch.int64)
    names = [k for k, _ in param_specs(V, Vp, T, L, NH, C)]
    P = {k: P0[k].clone().requires_grad_(True) for k in names}
    opt, sched = make_optimizer(P, names, c)
    losses, norms, lrs = [], [], []
    for t in range(S):
        opt.zero_grad(set_to_none=False)
        logits = gpt_forward(P, batches[t, :, :T], V, Vp, L, NH, C)
        loss = mean_loss(logits, batches[t, :, 1:])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([P[k] for k in names], c["grad_clip"])
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(loss.item())
        norms.append(norm.item())
    blob = Blob()
    blob.add("inputs", batches.numpy(), np.int32)
    for k in names:
        blob.add("param0/" + k, P0[k].numpy(), np.float32)
    blob.add("loss", np.array(losses), np.float32)
    blob.add("grad_norm", np.array(norms), np.float32)
    blob.add("lr", np.array(lrs), np.float64)
    for k in names:
        blob.add("final/" + k, P[k].detach().numpy(), np.float32)
    config = dict(V=V, Vp=Vp, T=T, L=L, NH=NH, C=C, B=B, seed=c["seed"])
    optim = {k: c[k] for k in ("steps", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1",
                               "beta2", "eps", "grad_clip")}
    optim["schedule"] = SCHEDULE_TEXT
    n = blob.write(out_dir, c["name"], {"kind": "trajectory", "compute_dtype": "float32",
                                        "config": config, "optim": optim})
    clipped = sum(1 for x in norms if x > c["grad_clip"])
    print(f"{c['name']}: losses {losses[0]:.4f} -> {losses[-1]:.4f}, grad norms "
          f"{min(norms):.3f}..{max(norms):.3f} ({clipped}/{S} clipped), {n} bytes", file=sys.stderr)



# ---- BERT ------------------------------------------------------------------------------------

# name, V_tok, Vp, T, L, NH, C, B, seed: odd sizes as for GPT (n_head 3 and 5, C not a multiple of
# 8, T not a power of two), a padded and an unpadded vocabulary, and a longer T.
BERT_CONFIGS = [
    ("bert_odd", 257, 320, 13, 2, 3, 36, 2, 31),
    ("bert_unpadded", 57, 61, 16, 1, 5, 40, 3, 32),
    ("bert_long", 61, 72, 70, 2, 2, 24, 2, 33),
]

BERT_TRAJECTORY = dict(name="bert_trajectory_v1", Vtok=257, Vp=264, T=16, L=2, NH=3, C=36, B=4,
                       seed=41, run_seed=7, steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=3,
                       weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.2)

M64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def unit(bits):
    return ((bits >> 11) + 0.5) * 2.0 ** -53


def mlm_mask_key(run_seed, step, window):
    k = splitmix64((run_seed ^ 0x6d6c6d2d6d61736b) & M64)
    return splitmix64(splitmix64(k ^ (step & M64)) ^ (window & M64))


def mlm_example(window, T, Vtok, key):
    """common/data/mlm.cpp: [CLS] window[0:T-2] [SEP], 15% chosen, 80/10/10."""
    pad, cls, sep, mask = Vtok, Vtok + 1, Vtok + 2, Vtok + 3
    n = T - 2
    inputs = [cls] + [int(w) for w in window[:n]] + [sep]
    labels = [-100] * T
    draw = lambda j, r: splitmix64((key + 3 * j + r) & M64)
    chosen = [j for j in range(n) if unit(draw(j, 0)) < 0.15]
    if not chosen:
        chosen = [splitmix64(key) % n]
    for j in chosen:
        labels[j + 1] = inputs[j + 1]
        u = unit(draw(j, 1))
        if u < 0.8:
            inputs[j + 1] = mask
        elif u < 0.9:
            inputs[j + 1] = draw(j, 2) % Vtok
    return inputs, labels


def bert_specs(Vp, T, L, C, num_labels=0):
    """(name, shape) in ptrain's flat-layout order (common/tensor/param_layout.cpp, build_bert)."""
    I = 4 * C
    specs = [("bert.embeddings.word_embeddings.weight", (Vp, C)),
             ("bert.embeddings.position_embeddings.weight", (T, C)),
             ("bert.embeddings.token_type_embeddings.weight", (2, C)),
             ("bert.embeddings.LayerNorm.weight", (C,)), ("bert.embeddings.LayerNorm.bias", (C,))]
    for l in range(L):
        p = f"bert.encoder.layer.{l}."
        for n in ("query", "key", "value"):
            specs += [(p + f"attention.self.{n}.weight", (C, C)), (p + f"attention.self.{n}.bias", (C,))]
        specs += [(p + "attention.output.dense.weight", (C, C)), (p + "attention.output.dense.bias", (C,)),
                  (p + "attention.output.LayerNorm.weight", (C,)), (p + "attention.output.LayerNorm.bias", (C,)),
                  (p + "intermediate.dense.weight", (I, C)), (p + "intermediate.dense.bias", (I,)),
                  (p + "output.dense.weight", (C, I)), (p + "output.dense.bias", (C,)),
                  (p + "output.LayerNorm.weight", (C,)), (p + "output.LayerNorm.bias", (C,))]
    if num_labels:
        specs += [("bert.pooler.dense.weight", (C, C)), ("bert.pooler.dense.bias", (C,)),
                  ("classifier.weight", (num_labels, C)), ("classifier.bias", (num_labels,))]
    else:
        specs += [("cls.predictions.bias", (Vp,)),
                  ("cls.predictions.transform.dense.weight", (C, C)),
                  ("cls.predictions.transform.dense.bias", (C,)),
                  ("cls.predictions.transform.LayerNorm.weight", (C,)),
                  ("cls.predictions.transform.LayerNorm.bias", (C,))]
    return specs


def make_bert_params(gen, V, Vp, T, L, C, scale):
    P = {}
    for name, shape in bert_specs(Vp, T, L, C):
        if name.endswith(".bias"):
            t = torch.randn(shape, generator=gen) * (0.0 if scale == "init" else 0.05)
        elif "LayerNorm" in name:
            t = 1.0 + torch.randn(shape, generator=gen) * (0.0 if scale == "init" else 0.1)
        else:
            t = torch.randn(shape, generator=gen) * (0.02 if scale == "init" else 0.08)
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            t[V:] = 0.0
        P[name] = t.to(torch.float32).contiguous()
    return P


def bert_encode(P, ids, L, NH, C, valid=None):
    B, T = ids.shape
    hd = C // NH
    e = "bert.embeddings."
    x = (P[e + "word_embeddings.weight"][ids] + P[e + "token_type_embeddings.weight"][0]
         + P[e + "position_embeddings.weight"][:T])
    x = F.layer_norm(x, (C,), P[e + "LayerNorm.weight"], P[e + "LayerNorm.bias"], eps=1e-12)
    for l in range(L):
        p = f"bert.encoder.layer.{l}."
        lin = lambda h, n: F.linear(h, P[p + n + ".weight"], P[p + n + ".bias"])
        heads = lambda t: t.view(B, T, NH, hd).transpose(1, 2)
        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        if valid is not None:
            att = att.masked_fill(~valid[:, None, None, :], float("-inf"))
        att = torch.softmax(att, dim=-1)
        a = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = F.layer_norm(lin(a, "attention.output.dense") + x, (C,),
                         P[p + "attention.output.LayerNorm.weight"],
                         P[p + "attention.output.LayerNorm.bias"], eps=1e-12)
        i = F.gelu(lin(x, "intermediate.dense"))
        x = F.layer_norm(lin(i, "output.dense") + x, (C,), P[p + "output.LayerNorm.weight"],
                         P[p + "output.LayerNorm.bias"], eps=1e-12)
    return x


def bert_mlm_logits(P, ids, V, Vp, L, NH, C):
    x = bert_encode(P, ids, L, NH, C)
    c = "cls.predictions."
    h = F.gelu(F.linear(x, P[c + "transform.dense.weight"], P[c + "transform.dense.bias"]))
    h = F.layer_norm(h, (C,), P[c + "transform.LayerNorm.weight"], P[c + "transform.LayerNorm.bias"],
                     eps=1e-12)
    logits = F.linear(h, P["bert.embeddings.word_embeddings.weight"], P[c + "bias"])
    if Vp > V:
        pad = torch.zeros(Vp, dtype=torch.bool)
        pad[V:] = True
        logits = logits.masked_fill(pad, float("-inf"))
    return logits


def mlm_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def masked_batch(windows, T, Vtok, run_seed, step, ids):
    ins, labs = [], []
    for w, i in zip(windows.tolist(), ids):
        a, b = mlm_example(w, T, Vtok, mlm_mask_key(run_seed, step, i))
        ins.append(a)
        labs.append(b)
    return torch.tensor(ins, dtype=torch.int64), torch.tensor(labs, dtype=torch.int64)


def gen_bert(out_dir, name, Vtok, Vp, T, L, NH, C, B, seed):
    V = Vtok + 4
    gen = torch.Generator().manual_seed(seed)
    P32 = make_bert_params(gen, V, Vp, T, L, C, "rich")
    windows = torch.randint(0, Vtok, (B, T + 1), generator=gen, dtype=torch.int64)
    run_seed, step = seed * 1000 + 1, 5
    window_ids = [17 * b + 3 for b in range(B)]
    inputs, labels = masked_batch(windows, T, Vtok, run_seed, step, window_ids)
    P = {k: v.to(torch.float64).requires_grad_(True) for k, v in P32.items()}
    logits = bert_mlm_logits(P, inputs, V, Vp, L, NH, C)
    loss = mlm_loss(logits, labels)
    loss.backward()
    specs = bert_specs(Vp, T, L, C)
    blob = Blob()
    blob.add("windows", windows.numpy(), np.int32)
    blob.add("window_ids", np.array(window_ids), np.int64)
    blob.add("inputs", inputs.numpy(), np.int32)
    blob.add("labels", labels.numpy(), np.int32)
    for k, _ in specs:
        blob.add("param/" + k, P32[k].numpy(), np.float32)
    blob.add("logits", logits.detach().numpy(), np.float32)
    blob.add("loss", np.array(loss.item()), np.float32)
    for k, _ in specs:
        blob.add("grad/" + k, P[k].grad.numpy(), np.float32)
    config = dict(arch="bert", V=V, Vp=Vp, T=T, L=L, NH=NH, C=C, B=B, seed=seed,
                  run_seed=run_seed, step=step)
    n = blob.write(out_dir, name, {"kind": "bert", "compute_dtype": "float64", "config": config})
    print(f"{name}: loss {loss.item():.6f} over {int((labels != -100).sum())} masked, {n} bytes",
          file=sys.stderr)


def gen_bert_trajectory(out_dir, c):
    Vtok, Vp, T, L, NH, C, B = c["Vtok"], c["Vp"], c["T"], c["L"], c["NH"], c["C"], c["B"]
    V = Vtok + 4
    S, W = c["steps"], c["warmup_steps"]
    gen = torch.Generator().manual_seed(c["seed"])
    P0 = make_bert_params(gen, V, Vp, T, L, C, "init")
    windows = torch.randint(0, Vtok, (S, B, T + 1), generator=gen, dtype=torch.int64)
    names = [k for k, _ in bert_specs(Vp, T, L, C)]
    P = {k: P0[k].clone().requires_grad_(True) for k in names}
    opt, sched = make_optimizer(P, names, c)
    losses, norms, lrs, all_in, all_lab = [], [], [], [], []
    for t in range(S):
        inputs, labels = masked_batch(windows[t], T, Vtok, c["run_seed"], t, [t * B + b for b in range(B)])
        all_in.append(inputs)
        all_lab.append(labels)
        opt.zero_grad(set_to_none=False)
        loss = mlm_loss(bert_mlm_logits(P, inputs, V, Vp, L, NH, C), labels)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([P[k] for k in names], c["grad_clip"])
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(loss.item())
        norms.append(norm.item())
    blob = Blob()
    blob.add("windows", windows.numpy(), np.int32)
    blob.add("inputs", torch.stack(all_in).numpy(), np.int32)
    blob.add("labels", torch.stack(all_lab).numpy(), np.int32)
    for k in names:
        blob.add("param0/" + k, P0[k].numpy(), np.float32)
    blob.add("loss", np.array(losses), np.float32)
    blob.add("grad_norm", np.array(norms), np.float32)
    blob.add("lr", np.array(lrs), np.float64)
    for k in names:
        blob.add("final/" + k, P[k].detach().numpy(), np.float32)
    config = dict(arch="bert", V=V, Vp=Vp, T=T, L=L, NH=NH, C=C, B=B, seed=c["seed"],
                  run_seed=c["run_seed"])
    optim = {k: c[k] for k in ("steps", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1",
                               "beta2", "eps", "grad_clip")}
    optim["schedule"] = SCHEDULE_TEXT
    n = blob.write(out_dir, c["name"], {"kind": "bert_trajectory", "compute_dtype": "float32",
                                        "config": config, "optim": optim})
    print(f"{c['name']}: losses {losses[0]:.4f} -> {losses[-1]:.4f}, {n} bytes", file=sys.stderr)



BERT_CLS = ("bert_cls", 57, 61, 19, 2, 3, 24, 4, 3, 34)  # name, V_tok, Vp, T, L, NH, C, B, K, seed


def gen_bert_cls(out_dir, name, Vtok, Vp, T, L, NH, C, B, K, seed):
    V = Vtok + 4
    gen = torch.Generator().manual_seed(seed)
    P32 = make_bert_params(gen, V, Vp, T, L, C, "rich")
    del P32["cls.predictions.bias"]
    for k in [k for k in P32 if k.startswith("cls.predictions.")]:
        del P32[k]
    P32["bert.pooler.dense.weight"] = (torch.randn((C, C), generator=gen) * 0.08).float()
    P32["bert.pooler.dense.bias"] = (torch.randn((C,), generator=gen) * 0.05).float()
    P32["classifier.weight"] = (torch.randn((K, C), generator=gen) * 0.3).float()
    P32["classifier.bias"] = (torch.randn((K,), generator=gen) * 0.05).float()
    lengths = [T, 5, 11, 3][:B]
    ids = torch.full((B, T), Vtok, dtype=torch.int64)  # [PAD]
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, n in enumerate(lengths):
        text = torch.randint(0, Vtok, (n - 2,), generator=gen, dtype=torch.int64)
        ids[b, 0], ids[b, n - 1] = Vtok + 1, Vtok + 2
        ids[b, 1:n - 1] = text
        valid[b, :n] = True
    labels = torch.randint(0, K, (B,), generator=gen, dtype=torch.int64)
    P = {k: v.to(torch.float64).requires_grad_(True) for k, v in P32.items()}
    h = bert_encode(P, ids, L, NH, C, valid)
    pooled = torch.tanh(F.linear(h[:, 0], P["bert.pooler.dense.weight"], P["bert.pooler.dense.bias"]))
    logits = F.linear(pooled, P["classifier.weight"], P["classifier.bias"])
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    specs = bert_specs(Vp, T, L, C, K)
    blob = Blob()
    blob.add("inputs", ids.numpy(), np.int32)
    blob.add("valid", valid.numpy(), np.int32)
    blob.add("labels", labels.numpy(), np.int32)
    for k, _ in specs:
        blob.add("param/" + k, P32[k].numpy(), np.float32)
    blob.add("logits", logits.detach().numpy(), np.float32)
    blob.add("loss", np.array(loss.item()), np.float32)
    for k, _ in specs:
        blob.add("grad/" + k, P[k].grad.numpy(), np.float32)
    config = dict(arch="bert", V=V, Vp=Vp, T=T, L=L, NH=NH, C=C, B=B, seed=seed, num_labels=K)
    n = blob.write(out_dir, name, {"kind": "bert_cls", "compute_dtype": "float64", "config": config})
    print(f"{name}: loss {loss.item():.6f}, {n} bytes", file=sys.stderr)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names to write (default: all)")
    ap.add_argument("--list", action="store_true", help="print the fixture names and exit")
    args = ap.parse_args()
    all_names = ([g[0] for g in GPT_CONFIGS] + [TRAJECTORY["name"]] + [g[0] for g in BERT_CONFIGS]
                 + [BERT_TRAJECTORY["name"], BERT_CLS[0]])
    if args.list:
        print("\n".join(all_names))
        return 0
    wanted = set(args.only) if args.only else set(all_names)
    unknown = wanted - set(all_names)
    if unknown:
        ap.error(f"unknown fixture(s): {sorted(unknown)}; known: {all_names}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for g in GPT_CONFIGS:
        if g[0] in wanted:
            gen_gpt(args.out, *g)
    if TRAJECTORY["name"] in wanted:
        gen_trajectory(args.out, TRAJECTORY)
    for g in BERT_CONFIGS:
        if g[0] in wanted:
            gen_bert(args.out, *g)
    if BERT_TRAJECTORY["name"] in wanted:
        gen_bert_trajectory(args.out, BERT_TRAJECTORY)
    if BERT_CLS[0] in wanted:
        gen_bert_cls(args.out, *BERT_CLS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
