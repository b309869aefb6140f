"""The RAG benchmark behind scripts/bench-rag (read its header first).

The sides run one after the other: first Flowers' RAG service, a child process fed by the
stand-in embedding server in this process; then Chroma, in a fresh Python process of its own
(spawned), so that its memory is measured without this process's.
"""

import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench_common import Engine, peak_rss_mib

FLOWERS = os.environ["BENCH_FLOWERS"]
SCALES = [int(s) for s in os.environ.get("BENCH_SCALES", "10000 100000").split()]
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))
REAL_CHUNKS = int(os.environ.get("BENCH_REAL_CHUNKS", "2000"))
THREADS = int(os.environ.get("BENCH_THREADS", str(len(os.sched_getaffinity(0)))))
SEED = 1234
DIMENSION = 384
VOCABULARY = 30_000
CHUNKS_PER_FILE = 10
WARMUP = 10
K = 10
COLLECTION = "bench"

# Nothing may leave the machine: no telemetry, no model downloads (the real part loads MiniLM
# from its local folder).
os.environ.update(ANONYMIZED_TELEMETRY="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                  RAYON_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS))


# --- The synthetic corpus -------------------------------------------------------------------

class Words:
    """Pseudo-words built from syllables, drawn with Zipf's law (short words are the common
    ones), from one seeded generator: the same calls give the same text on every machine."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
        syllables += ["ar", "en", "is", "ol", "um"]
        words = set()
        while len(words) < VOCABULARY:
            count = int(self.rng.integers(1, 5))
            words.add("".join(self.rng.choice(syllables, count)))
        self.words = sorted(words, key=lambda w: (len(w), w))
        weights = 1.0 / np.arange(1, VOCABULARY + 1)
        self.cdf = np.cumsum(weights / weights.sum())

    def draw(self, n):
        ranks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), VOCABULARY - 1)
        return [self.words[r] for r in ranks]

    def phrase(self, low, high):
        return " ".join(self.draw(int(self.rng.integers(low, high + 1))))

    def paragraph(self):
        """Sentences of 6-18 words up to a length drawn from 300-700 characters."""
        target = int(self.rng.integers(300, 701))
        sentences, length = [], 0
        while length < target - 40:
            sentence = self.phrase(6, 18).capitalize() + "."
            sentences.append(sentence)
            length += len(sentence) + 1
        return " ".join(sentences)

    def document(self):
        """A Markdown file of about CHUNKS_PER_FILE chunks: a title, an introduction and four
        sections of three paragraphs."""
        parts = [f"# {self.phrase(3, 6).title()}", self.paragraph()]
        for _ in range(4):
            parts.append(f"## {self.phrase(2, 5).capitalize()}")
            parts += [self.paragraph() for _ in range(3)]
        return "\n\n".join(parts) + "\n"


def write_corpus(folder, chunks):
    """About `chunks` chunks as Markdown files, in folders of 100."""
    words = Words(SEED)
    files = max(1, round(chunks / CHUNKS_PER_FILE))
    for i in range(files):
        path = folder / f"d{i // 100:04}" / f"f{i:06}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(words.document())


def make_queries(n):
    words = Words(SEED + 1)
    return [words.phrase(5, 8) for _ in range(n)]


def chunk_markdown(text, max_chars=1000, overlap=150):
    """Chroma's side of chunking: each heading starts a section, a section's paragraphs are
    packed into chunks of at most max_chars, and each chunk after a section's first starts
    with up to `overlap` characters (whole words) of the chunk before it, as Flowers does."""
    chunks = []
    for section in re.split(r"\n(?=#)", text):
        current = ""
        for piece in (p.strip() for p in section.split("\n\n")):
            if not piece:
                continue
            if current and len(current) + 2 + len(piece) > max_chars:
                chunks.append(current)
                tail = current[-overlap:]
                current = tail[tail.find(" ") + 1:] + "\n\n" + piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
        if current:
            chunks.append(current)
    return chunks


# --- The stand-in embedder ------------------------------------------------------------------

def standin_embed(texts):
    """STAND-IN for a sentence-embedding model, the same for both sides: lower-cased words and
    word bigrams hashed (CRC-32) into DIMENSION signed buckets, L2-normalised. Cheap enough
    that the benchmark measures storage, indexing and retrieval rather than embedding."""
    vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    for row, text in enumerate(texts):
        tokens = re.findall(r"\w+", text.lower())
        features = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
        hashes = np.array([zlib.crc32(f.encode()) for f in features], dtype=np.uint32)
        signs = np.where(hashes >> 31, 1.0, -1.0)
        vectors[row] = np.bincount(hashes % DIMENSION, weights=signs, minlength=DIMENSION)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


class StandinHandler(BaseHTTPRequestHandler):
    """OpenAI's `POST /v1/embeddings`, as the RAG service's client sends it: {model, input}."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without this, Nagle's algorithm and the client's
    # delayed acknowledgement hold every answer back 40 ms.
    disable_nagle_algorithm = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings":
            return self.answer(404, {"code": "not_found", "message": self.path})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = standin_embed(texts)
        self.answer(200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                     for i, v in enumerate(vectors)],
            "model": body.get("model", "standin"),
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        })

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class StandinServer:
    """The stand-in embedder over HTTP on a free loopback port, until closed."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), StandinHandler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- Measuring ------------------------------------------------------------------------------

def current_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mib(folder):
    """What the folder takes on disk (allocated blocks, as du counts them)."""
    return sum(p.stat().st_blocks * 512 for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def latencies_ms(queries, ask):
    """p50 and p99 of `ask(query)` over the queries, asked one after another after a warm-up."""
    for query in queries[:WARMUP]:
        ask(query)
    times = []
    for query in queries:
        start = time.perf_counter()
        ask(query)
        times.append((time.perf_counter() - start) * 1000)
    percentiles = statistics.quantiles(times, n=100)
    return percentiles[49], percentiles[98]


# --- Flowers --------------------------------------------------------------------------------

def post(url, body, timeout=600):
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        sys.exit(f"bench-rag: {url} answered {error.code}: {error.read().decode()[:500]}")


def service(args, log):
    """`flowers engine ARGS...`, its output in `log`."""
    return Engine(FLOWERS, args, "bench-rag", log=log)


def ingest(url, folder):
    """Ingests the folder through the event stream; returns the `done` event's report."""
    with post(f"{url}/v1/collections/{COLLECTION}/ingest", {"path": str(folder)},
              timeout=None) as answer:
        event = None
        for raw in answer:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("done", "error"):
                data = json.loads(line[len("data: "):])
                if event == "error":
                    sys.exit(f"bench-rag: the ingest of {folder} failed: {data['message']}")
                if data["failed"]:
                    sys.exit(f"bench-rag: {data['failed']} files failed to ingest, "
                             f"the first: {data['errors'][0]}")
                return data
    sys.exit(f"bench-rag: the ingest of {folder} ended without a done event")


def flowers_side(corpus, data, queries, engines_url, embed_model, modes):
    """Ingest and query latencies of `flowers engine rag` over `corpus`, its data in `data`."""
    rag = service(["rag", "--data", str(data), "--engines", engines_url,
                   "--embed-model", embed_model], data.parent / "flowers-rag.log")
    try:
        post(f"{rag.url}/v1/collections", {"name": COLLECTION}).close()
        start = time.perf_counter()
        report = ingest(rag.url, corpus)
        seconds = time.perf_counter() - start

        def search(mode):
            def ask(query):
                with post(f"{rag.url}/v1/search", {"collection": COLLECTION, "query": query,
                                                   "k": K, "mode": mode}) as answer:
                    if len(json.load(answer)["results"]) != K:
                        sys.exit(f"bench-rag: Flowers' {mode} search found fewer than {K} chunks")
            return ask
        latency = {mode: latencies_ms(queries, search(mode)) for mode in modes}
        rss = rag.peak_rss_mib()
    finally:
        rag.close()
    return {"documents": report["added"], "chunks": report["chunks_added"], "seconds": seconds,
            "latency": latency, "rss": rss, "disk": disk_mib(data)}


# --- Chroma (in a spawned process of its own) ------------------------------------------------

def chroma_embedding_function(kind):
    import chromadb.utils.embedding_functions as functions
    from chromadb import EmbeddingFunction

    if kind == "minilm":
        import torch
        torch.set_num_threads(THREADS)
        return functions.SentenceTransformerEmbeddingFunction(
            model_name=os.environ["BENCH_MODEL_minilm"], device="cpu", normalize_embeddings=True)

    class Standin(EmbeddingFunction):
        def __init__(self):
            pass  # chromadb warns about an embedding function without its own __init__

        def __call__(self, input):
            return list(standin_embed(list(input)))

        @staticmethod
        def name():
            return "flowers-bench-standin"

        def get_config(self):
            return {}

        @staticmethod
        def build_from_config(config):
            return Standin()
    return Standin()


def chroma_side(corpus, data, queries, kind):
    """Ingest (read, chunk, embed, add) and dense query latency of a persistent Chroma."""
    before = current_rss_mib()
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(data),
                                       settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection(
        COLLECTION, configuration={"hnsw": {"space": "cosine"}},
        embedding_function=chroma_embedding_function(kind))
    batch = client.get_max_batch_size()
    start = time.perf_counter()
    files = sorted(corpus.rglob("*.md"))
    ids, texts, sources = [], [], []
    for path in files:
        for i, text in enumerate(chunk_markdown(path.read_text())):
            ids.append(f"{path}#{i}")
            texts.append(text)
            sources.append({"source": str(path)})
    for i in range(0, len(ids), batch):
        collection.add(ids=ids[i:i + batch], documents=texts[i:i + batch],
                       metadatas=sources[i:i + batch])
    seconds = time.perf_counter() - start

    def ask(query):
        if len(collection.query(query_texts=[query], n_results=K)["ids"][0]) != K:
            sys.exit(f"bench-rag: Chroma's query found fewer than {K} chunks")
    latency = {"dense": latencies_ms(queries, ask)}
    return {"documents": len(files), "chunks": len(ids), "seconds": seconds, "latency": latency,
            "characters": sum(map(len, texts)) / len(texts),
            "rss": peak_rss_mib(os.getpid()) - before, "disk": disk_mib(data)}


def in_own_process(function, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# --- The parts ------------------------------------------------------------------------------

def rows(ours, theirs, modes):
    rate = lambda side, what: side[what] / side["seconds"]  # noqa: E731
    table = [("ingest documents/s", rate(ours, "documents"), rate(theirs, "documents"), "higher"),
             ("ingest chunks/s", rate(ours, "chunks"), rate(theirs, "chunks"), "higher")]
    for mode in modes:
        for i, name in enumerate(("p50", "p99")):
            peer = theirs["latency"][mode][i] if mode in theirs["latency"] else None
            table.append((f"{mode} query {name} ms", ours["latency"][mode][i], peer, "lower"))
    table += [("peak RSS MiB", ours["rss"], theirs["rss"], "lower"),
              ("data on disk MiB", ours["disk"], theirs["disk"], "lower")]
    return table


def sides_note(ours, theirs):
    return (f"Flowers ingested {ours['documents']} files as {ours['chunks']} chunks in "
            f"{ours['seconds']:.1f} s, Chroma {theirs['documents']} files as {theirs['chunks']} "
            f"chunks (of {theirs['characters']:.0f} characters on average) in "
            f"{theirs['seconds']:.1f} s; {QUERIES} queries of 5-8 words, one at a time, k={K}, "
            f"after {WARMUP} to warm up; {THREADS} cores for both")


def bench_standin(scale):
    queries = make_queries(QUERIES)
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as temp:
        temp = Path(temp)
        write_corpus(temp / "corpus", scale)
        standin = StandinServer()
        try:
            ours = flowers_side(temp / "corpus", temp / "flowers", queries, standin.url,
                                "standin", ("dense", "bm25", "hybrid"))
            round_trip = latencies_ms(queries, lambda query: post(
                f"{standin.url}/v1/embeddings", {"model": "standin", "input": [query]}).close())
        finally:
            standin.close()
        theirs = in_own_process(chroma_side, temp / "corpus", temp / "chroma", queries, "standin")
    return rows(ours, theirs, ("dense", "bm25", "hybrid")), (
        f"VECTORS FROM A STAND-IN EMBEDDER (hashed words and bigrams, 384 dimensions), not "
        f"MiniLM, the same function for both: these numbers measure storage, indexing and "
        f"retrieval, not embedding (Flowers gets the vectors over HTTP as JSON, Chroma "
        f"in-process; one query's round trip to the stand-in alone takes {round_trip[0]:.1f} ms "
        f"at p50, which Flowers' dense and hybrid times include). {sides_note(ours, theirs)}. "
        f"Flowers' dense search is exact (from 20k vectors an int8 scan first, its best "
        f"candidates rescored exactly), Chroma's is HNSW (approximate); bm25 and hybrid have no "
        f"Chroma "
        f"equivalent. Flowers' RSS is the RAG service's; Chroma's is its process's growth from "
        f"before importing chromadb")


def bench_real():
    queries = make_queries(QUERIES)
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as temp:
        temp = Path(temp)
        write_corpus(temp / "corpus", REAL_CHUNKS)
        embed = service(["embed", "--model", os.environ["BENCH_MODEL_minilm"]],
                        temp / "flowers-embed.log")
        try:
            ours = flowers_side(temp / "corpus", temp / "flowers", queries, embed.url,
                                "minilm", ("dense",))
            ours["rss"] += embed.peak_rss_mib()
        finally:
            embed.close()
        theirs = in_own_process(chroma_side, temp / "corpus", temp / "chroma", queries, "minilm")
    return rows(ours, theirs, ("dense",)), (
        f"Real all-MiniLM-L6-v2 on both sides: `flowers engine embed` (candle, over HTTP) and "
        f"sentence-transformers (PyTorch, in-process), batches of 32 each. "
        f"{sides_note(ours, theirs)}. Flowers' RSS is the RAG and embed services' together; "
        f"Chroma's is its process's growth from before importing chromadb (PyTorch included)")


def print_table(title, table, note, markdown):
    """Flowers / Chroma ratios; Flowers-only rows have a dash for Chroma and the ratio."""
    number = lambda x: "—" if x is None else f"{x:.1f}"  # noqa: E731
    ratio = lambda ours, theirs: "—" if theirs is None else f"{ours / theirs:.2f}"  # noqa: E731
    peer = f"Chroma {version('chromadb')}"
    if markdown:
        print(f"\n| {title} | Flowers | {peer} | ×Chroma | better |\n|---|---|---|---|---|")
        for label, ours, theirs, better in table:
            print(f"| {label} | {number(ours)} | {number(theirs)} | {ratio(ours, theirs)} "
                  f"| {better} |")
        print(f"\n{note}.")
    else:
        print(f"\n{title}: Flowers vs {peer}")
        print(f"  {'':22} {'Flowers':>10} {'Chroma':>10}   {'ratio':>6}  better")
        for label, ours, theirs, better in table:
            print(f"  {label:22} {number(ours):>10} {number(theirs):>10}   "
                  f"{ratio(ours, theirs):>6}  {better}")
        print(f"  {note}")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    markdown = "--markdown" in sys.argv
    for name in args:
        if name not in ("standin", "real"):
            sys.exit(f"bench-rag: unknown part {name!r}; use standin or real")
    # Both sides on the same cores: the services, Chroma's process and the stand-in inherit it.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:THREADS])
    for name in args or ["standin"]:
        if name == "standin":
            for scale in SCALES:
                table, note = bench_standin(scale)
                print_table(f"RAG, {scale} chunks, stand-in vectors", table, note, markdown)
        else:
            table, note = bench_real()
            print_table(f"RAG, {REAL_CHUNKS} chunks, MiniLM", table, note, markdown)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
