"""The engine benchmarks behind scripts/bench-engines (read its header first)."""

import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

from bench_common import Engine, peak_rss_mib

REPO = Path(__file__).resolve().parent.parent
FLOWERS = os.environ["BENCH_FLOWERS"]
MINILM = os.environ["BENCH_MODEL_minilm"]
SMOLLM2 = os.environ["BENCH_MODEL_smollm2"]
SENTENCES = int(os.environ.get("BENCH_SENTENCES", "2000"))
BATCH = int(os.environ.get("BENCH_BATCH", "32"))
GEN_TOKENS = int(os.environ.get("BENCH_GEN_TOKENS", "128"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", str(os.cpu_count())))


def corpus_sentences(n):
    """Real prose of varied length: the retrieval evaluation corpus, split into sentences."""
    texts = []
    for path in sorted((REPO / "crates" / "rag" / "eval" / "corpus").glob("*")):
        text = re.sub(r"<[^>]+>", " ", path.read_text())
        texts += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
    if not texts:
        sys.exit("bench-engines: no corpus found under crates/rag/eval/corpus")
    return [texts[i % len(texts)] for i in range(n)]


def post(url, body, timeout=600):
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def start_engine(kind, model):
    """`flowers engine KIND` with the model, on the benchmark's threads."""
    return Engine(FLOWERS, [kind, "--model", model], "bench-engines",
                  env={"RAYON_NUM_THREADS": str(THREADS)})


def best(runs):
    return min(runs)


def bench_embed():
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    texts = corpus_sentences(SENTENCES)
    engine = start_engine("embed", MINILM)
    try:
        ours = []
        for _ in range(REPEAT):
            start = time.perf_counter()
            vectors = []
            for i in range(0, len(texts), BATCH):
                answer = post(f"{engine.url}/v1/embeddings", {"input": texts[i:i + BATCH]})
                vectors += [d["embedding"] for d in answer["data"]]
            ours.append(time.perf_counter() - start)
        our_rss = engine.peak_rss_mib()
    finally:
        engine.close()
    before = peak_rss_mib(os.getpid())
    model = SentenceTransformer(MINILM, device="cpu")
    theirs = []
    for _ in range(REPEAT):
        # The same batches as Flowers gets (each one sorted by length inside, by both).
        start = time.perf_counter()
        peer = np.concatenate([model.encode(texts[i:i + BATCH], batch_size=BATCH,
                                            convert_to_numpy=True)
                               for i in range(0, len(texts), BATCH)])
        theirs.append(time.perf_counter() - start)
    their_rss = peak_rss_mib(os.getpid())
    difference = float(np.max(np.abs(np.array(vectors) - peer)))
    return [
        ("embeddings/s", SENTENCES / best(ours), SENTENCES / best(theirs), "higher"),
        ("peak RSS MiB", our_rss, their_rss, "lower"),
    ], (f"{SENTENCES} sentences from the eval corpus, the same batches of {BATCH} to both, best of {REPEAT}; "
        f"largest difference between the two engines' vector components: {difference:.2e}; "
        f"peer RSS is the whole Python process (it was {before:.0f} MiB before loading)")


def bench_chat():
    from llama_cpp import Llama

    prompt = " ".join(corpus_sentences(60))[:1800] + "\n\nSummarise the text above."
    engine = start_engine("chat", SMOLLM2)
    try:
        ours_gen, ours_prompt = [], []
        for _ in range(REPEAT):
            start = time.perf_counter()
            answer = post(f"{engine.url}/v1/completions",
                          {"prompt": prompt, "max_tokens": 1, "temperature": 0})
            ours_prompt.append((answer["usage"]["prompt_tokens"], time.perf_counter() - start))
            start = time.perf_counter()
            answer = post(f"{engine.url}/v1/completions",
                          {"prompt": "Once upon a time", "max_tokens": GEN_TOKENS,
                           "temperature": 0, "stop": []})
            ours_gen.append((answer["usage"]["completion_tokens"], time.perf_counter() - start))
        our_rss = engine.peak_rss_mib()
    finally:
        engine.close()
    llm = Llama(model_path=SMOLLM2, n_ctx=4096, n_threads=THREADS, verbose=False, seed=1)
    theirs_gen, theirs_prompt = [], []
    for _ in range(REPEAT):
        llm.reset()
        start = time.perf_counter()
        answer = llm.create_completion(prompt, max_tokens=1, temperature=0)
        theirs_prompt.append((answer["usage"]["prompt_tokens"], time.perf_counter() - start))
        llm.reset()
        start = time.perf_counter()
        answer = llm.create_completion("Once upon a time", max_tokens=GEN_TOKENS, temperature=0)
        theirs_gen.append((answer["usage"]["completion_tokens"], time.perf_counter() - start))
    rate = lambda runs: max(n / t for n, t in runs)  # noqa: E731
    return [
        ("prompt tokens/s", rate(ours_prompt), rate(theirs_prompt), "higher"),
        ("generated tokens/s", rate(ours_gen), rate(theirs_gen), "higher"),
        ("peak RSS MiB", our_rss, peak_rss_mib(os.getpid()), "lower"),
    ], (f"SmolLM2-135M-Instruct Q4_1 (Flowers unpacks it to f32 at load, llama.cpp keeps it "
        f"quantized), greedy; peer RSS is the whole Python process; prompt: {ours_prompt[0][0]} tokens (llama.cpp "
        f"counted {theirs_prompt[0][0]}); generation: up to {GEN_TOKENS} tokens after "
        f"'Once upon a time' ({ours_gen[0][0]} and {theirs_gen[0][0]} generated); best of "
        f"{REPEAT}; {THREADS} threads each")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    markdown = "--markdown" in sys.argv
    parts = {"embed": ("embeddings", "sentence-transformers", bench_embed),
             "chat": ("chat", "llama.cpp", bench_chat)}
    names = args or list(parts)
    for name in names:
        if name not in parts:
            sys.exit(f"bench-engines: unknown part {name!r}; use embed or chat")
    if len(names) > 1:
        # One process per part: a peer's peak memory must not include the other's libraries.
        for name in names:
            subprocess.run([sys.executable, __file__, name, *[a for a in sys.argv[1:]
                                                              if a.startswith("--")]], check=True)
        return
    for name in names:
        title, peer, run = parts[name]
        rows, note = run()
        if markdown:
            print(f"\n| {title} | Flowers | {peer} | ×{peer} |\n|---|---|---|---|")
            for label, ours, theirs, _ in rows:
                print(f"| {label} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
            print(f"\n{note}.")
        else:
            print(f"\n{title}: Flowers vs {peer}")
            for label, ours, theirs, _ in rows:
                print(f"  {label:20} {ours:10.1f} {theirs:10.1f}   ×{ours / theirs:.2f}")
            print(f"  {note}")


if __name__ == "__main__":
    main()
