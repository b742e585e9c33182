#!/usr/bin/env python3
"""Does a request's answer depend on which others run beside it?

Starts one edge worker (the bundled model), then, per trial, asks four
greedy questions one at a time and then the same four at once, with token
log-probabilities, and reports every trial in which an answer run together
differs from the same answer run alone: the first token that differs, and
its log-probability alone and together. Alone answers are also checked to
be the same in every trial.

    .venv/bin/python scripts/batch-invariance.py --trials 20
    .venv/bin/python scripts/batch-invariance.py --trials 20 --delay-first 0.3 -- --prefix-cache-sequences 0

Arguments after `--` go to the edge worker. `--delay-first` sends the first
(longest) question that many seconds after the others. It found the
scheduler restarting sequences set aside in mid-generation from their
prompt (vendor/README.md, mistralrs-core): before that fix about a quarter
of the trials deviated, after it none did.
"""

import argparse
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Invent a name for a cat and say why.",
    "Name a colour.",
    "What is two plus two?",
    "Say hello in French.",
]


def start_worker(extra):
    env = dict(os.environ, EDGE_INSECURE_NO_TOKEN="true")
    worker = subprocess.Popen(
        [str(ROOT / "target/release/edge-worker"), "--model-path", str(MODEL_PATH),
         "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    for line in worker.stdout:
        found = re.search(r"listening on (\S+)", line)
        if found:
            address = found.group(1)
            return worker, address if address.startswith("http") else "http://" + address
    sys.exit("the edge worker did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--delay-first", type=float, default=0.0)
    parser.add_argument("worker_args", nargs="*")
    args = parser.parse_args()

    worker, base = start_worker(args.worker_args)
    client = httpx.Client(timeout=120)

    def ask(prompt, max_tokens=args.max_tokens):
        response = client.post(base + "/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 2,
        })
        response.raise_for_status()
        return [(t["token"], t["logprob"]) for t in response.json()["choices"][0]["logprobs"]["content"]]

    try:
        for _ in range(600):  # until the model is loaded
            try:
                ask("hi", 1)
                break
            except httpx.HTTPStatusError:
                time.sleep(0.1)
        deviating = 0
        alone_seen = {p: set() for p in PROMPTS}

        def ask_together(prompt):
            if prompt == PROMPTS[0]:
                time.sleep(args.delay_first)
            return ask(prompt)

        for trial in range(args.trials):
            alone = [ask(p) for p in PROMPTS]
            with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
                together = list(pool.map(ask_together, PROMPTS))
            differences = []
            for prompt, a, t in zip(PROMPTS, alone, together):
                alone_seen[prompt].add(tuple(a))
                for i, (x, y) in enumerate(zip(a, t)):
                    if x != y:
                        differences.append(
                            f"{prompt!r} token {i}: {x[0]!r} {x[1]:.5f} alone, {y[0]!r} {y[1]:.5f} together")
                        break
            if differences:
                deviating += 1
                print(f"trial {trial}:", *differences, sep="\n  ", flush=True)
        print(f"{deviating} of {args.trials} trials deviated; distinct alone answers per prompt:",
              [len(s) for s in alone_seen.values()])
    finally:
        worker.terminate()
        worker.wait()


if __name__ == "__main__":
    main()
