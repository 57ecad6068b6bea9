#!/usr/bin/python3
"""Times the same GPT training step in PyTorch (CPU) and in ptrain, in one run, and OpenBLAS sgemm.

    /usr/bin/python3 scripts/bench_torch.py [--config configs/bench-small.yaml] [--ptrain PATH]
        [--set key=value]... [--steps N] [--warmup N] [--rounds R] [--foreach auto|on|off] [--json]

1. `ptrain bench train CONFIG --json` (forward+backward over train.micro_batch micro-batches summing
   to train.batch_size sequences, global-norm clip, AdamW) gives ptrain's tokens/s and the model's
   dimensions and thread count.
2. The same model in PyTorch, written the usual way (nn.Linear/nn.LayerNorm/nn.Embedding modules,
   causal attention by matmul + masked_fill + softmax — torch 1.13 has no fused attention —,
   tanh-GELU, tied LM head, F.cross_entropy), the same micro-batching, clip_grad_norm_ and
   torch.optim.AdamW with weight decay on >= 2-D tensors, torch.set_num_threads(threads), on random
   tokens: warmup then timed steps.
3. `ptrain bench sgemm --size 2048 --threads THREADS --json`: OpenBLAS's sgemm rate, the yardstick
   for ptrain's achieved GFLOP/s (FLOPs/token = 6·N + 12·L·T·C, N = parameters, tied head once).
The three run alternately --rounds times and each one's best round is reported (other load on a
shared machine slows one side or the other at random; the best round is the closest to an idle
machine). Prints torch's build/BLAS/threading info and the BLAS libraries it has loaded, both
tokens/s, the ratio, and ptrain's fraction of sgemm, with every round's numbers and the 1-minute
load average before and after. Must run with /usr/bin/python3 (Debian's python3-torch).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x, mask):
        B, T, C = x.shape
        hd = C // self.NH
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.NH, hd).transpose(1, 2)
        k = k.view(B, T, self.NH, hd).transpose(1, 2)
        v = v.view(B, T, self.NH, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(mask[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, V, T, L, NH, C):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, NH) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.register_buffer("mask", ~torch.ones(T, T, dtype=torch.bool).tril())
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def torch_bench(d, steps, warmup, foreach, seed=1337):
    torch.manual_seed(seed)
    V, T, L, NH, C, B, mb = d["Vp"], d["T"], d["L"], d["NH"], d["C"], d["batch_size"], d["micro_batch"]
    model = GPT(V, T, L, NH, C)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    kw = {} if foreach is None else {"foreach": foreach}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **kw)
    data = torch.randint(0, d["V"], (B, T + 1))
    n_micro = math.ceil(B / mb)

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b0 in range(0, B, mb):
            w = data[b0:b0 + mb]
            loss = model(w[:, :T], w[:, 1:]) * (w.shape[0] / B)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    mean = sum(times) / len(times)
    n_params = sum(p.numel() for p in model.parameters())
    return {"ms_per_step": mean * 1e3, "ms_per_step_best": min(times) * 1e3,
            "tokens_per_s": B * T / mean, "params": n_params, "loss": loss,
            "micro_batches": n_micro}


def find_ptrain(repo):
    for cand in ("build/cli/ptrain", "build-model/cli/ptrain"):
        p = os.path.join(repo, cand)
        if os.access(p, os.X_OK):
            return p
    return shutil.which("ptrain")


def run_json(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout.decode()
    return json.loads(out.strip().splitlines()[-1])


def loaded_blas():
    """The BLAS/LAPACK shared objects this process (torch) has mapped, e.g. OpenBLAS via
    Debian's libblas.so.3 alternative (torch's build says only BLAS_INFO=generic)."""
    torch.ones(64, 64) @ torch.ones(64, 64)
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                name = os.path.basename(path)
                if any(k in name for k in ("blas", "lapack", "mkl", "gomp", "omp")) and "/" in path:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def torch_info():
    cfg = torch.__config__.show()
    blas = [s.strip() for s in cfg.replace(",", "\n").splitlines()
            if "BLAS_INFO" in s or "LAPACK_INFO" in s or "CPU capability" in s]
    return {"torch_version": torch.__version__, "blas": "; ".join(blas),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "blas_libraries": loaded_blas(),
            "parallel": torch.__config__.parallel_info().strip().splitlines()[:4]}


def main():
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(repo, "configs", "bench-small.yaml"))
    ap.add_argument("--ptrain", default=None, help="ptrain binary (default: build/cli/ptrain)")
    ap.add_argument("--set", action="append", default=[], help="key=value passed to ptrain")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate ptrain / torch / sgemm this many times; report each one's "
                         "best round (robust to other load on the machine)")
    ap.add_argument("--foreach", choices=["auto", "on", "off"], default="auto",
                    help="torch AdamW foreach implementation (auto: the faster of both in round 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    ptrain = args.ptrain or find_ptrain(repo)
    if not ptrain:
        ap.error("no ptrain binary found; pass --ptrain PATH")

    load_before = os.getloadavg()[0]
    sets = [a for s in args.set for a in ("--set", s)]
    variants = {"auto": [False, True], "on": [True], "off": [False]}[args.foreach]
    pt_runs, torch_runs, sg_runs = [], [], []
    for rnd in range(args.rounds):
        pt = run_json([ptrain, "bench", "train", args.config, "--json", "--steps", str(args.steps),
                       "--warmup", str(args.warmup)] + sets)
        pt_runs.append(pt)
        torch.set_num_threads(pt["threads"])
        for fe in variants:
            r = torch_bench(pt, args.steps, args.warmup, fe)
            r["foreach"] = fe
            torch_runs.append(r)
            print(f"round {rnd + 1}: ptrain {pt['ms_per_step']:.1f} ms/step, torch (AdamW "
                  f"foreach={fe}) {r['ms_per_step']:.1f} ms/step", file=sys.stderr)
        if rnd == 0 and len(variants) > 1:
            variants = [min(torch_runs, key=lambda x: x["ms_per_step"])["foreach"]]
        sg_runs.append(run_json([ptrain, "bench", "sgemm", "--size", "2048", "--threads",
                                 str(pt["threads"]), "--json"]))
    load_after = os.getloadavg()[0]

    pt = min(pt_runs, key=lambda x: x["ms_per_step"])
    best = min(torch_runs, key=lambda x: x["ms_per_step"])
    sg = max(sg_runs, key=lambda x: x["gflops_best"])
    threads = pt["threads"]
    info = torch_info()
    ratio = pt["tokens_per_s"] / best["tokens_per_s"]
    frac = pt["gflops"] / sg["gflops_best"]
    result = {"config": args.config, "model": {k: pt[k] for k in ("V", "Vp", "T", "L", "NH", "C",
                                                                  "batch_size", "micro_batch")},
              "threads": threads, "rounds": args.rounds, "torch": {**info, **best}, "ptrain": pt,
              "sgemm": sg, "ratio_tokens_per_s": ratio, "ptrain_fraction_of_sgemm": frac,
              "all_rounds_ms_per_step": {"ptrain": [r["ms_per_step"] for r in pt_runs],
                                         "torch": [r["ms_per_step"] for r in torch_runs],
                                         "sgemm_gflops": [r["gflops_best"] for r in sg_runs]},
              "load_avg_1min": [load_before, load_after]}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model        V {pt['V']} T {pt['T']} L {pt['L']} NH {pt['NH']} C {pt['C']}, "
          f"batch {pt['batch_size']} (micro-batch {pt['micro_batch']}), {pt['params']} parameters")
    print(f"torch        {info['torch_version']}; {info['blas']}")
    print(f"             loaded: {', '.join(info['blas_libraries'])}")
    print(f"             threads {info['threads']} (interop {info['interop_threads']}); "
          f"{' | '.join(info['parallel'])}")
    print(f"rounds       {args.rounds} x ({args.warmup} warmup + {args.steps} timed steps); "
          f"best round of each reported")
    print(f"torch        {best['ms_per_step']:.1f} ms/step, {best['tokens_per_s']:.0f} tokens/s "
          f"(AdamW foreach={best['foreach']}); rounds: "
          + ", ".join(f"{r['ms_per_step']:.0f}" for r in torch_runs))
    print(f"ptrain       {pt['ms_per_step']:.1f} ms/step, {pt['tokens_per_s']:.0f} tokens/s, "
          f"{pt['gflops']:.1f} GFLOP/s, {threads} threads; rounds: "
          + ", ".join(f"{r['ms_per_step']:.0f}" for r in pt_runs))
    print(f"sgemm 2048^3 {sg['gflops_best']:.1f} GFLOP/s (OpenBLAS, {sg['threads']} threads); rounds: "
          + ", ".join(f"{r['gflops_best']:.0f}" for r in sg_runs))
    print(f"ratio        ptrain/torch tokens/s = {ratio:.2f}x; ptrain = {100 * frac:.0f}% of sgemm")
    print(f"load avg     {load_before:.2f} before, {load_after:.2f} after (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
