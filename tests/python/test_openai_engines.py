"""The built-in engines and the RAG route, as a user reaches them: the embedded default config
(`flowers up` in a directory without flowers.toml), its models imported with --import-model the
way scripts/up does, and the official OpenAI Python client pointed at the gateway.

    python -m pytest tests/python

Needs the release binary (FLOWERS_BIN, else $CARGO_TARGET_DIR/release/flowers, else
target/release/flowers), the `openai` package and the default models (scripts/setup installs
both; scripts/model-paths says where the models are).
"""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def flowers_binary():
    candidates = [os.environ.get("FLOWERS_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "flowers"))
    candidates.append(str(REPO / "target" / "release" / "flowers"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("no flowers binary: set FLOWERS_BIN or build one (cargo build --release -p flowers)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_paths():
    out = subprocess.run([str(REPO / "scripts" / "model-paths")], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"scripts/model-paths failed: {out.stderr.strip()} (run scripts/setup)")
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """The embedded default on free ports, with the default models imported."""
    home = tmp_path_factory.mktemp("flowers")
    api, gateway = free_port(), free_port()
    imports = []
    for name, path in model_paths().items():
        imports += ["--import-model", f"{name}={path}"]
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWERS_CONFIG", "FLOWERS_API")}
    log = open(home / "flowers.log", "wb")
    process = subprocess.Popen(
        [flowers_binary(), "up", "--api-listen", f"127.0.0.1:{api}",
         "--gateway-listen", f"127.0.0.1:{gateway}", "--data-dir", str(home / "data"),
         "--cpu-slots", "2", *imports],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    control = f"http://127.0.0.1:{api}"
    try:
        services = wait_until_ready(process, control, home)
        yield {"control": control, "base": f"http://127.0.0.1:{gateway}",
               "services": {s["name"] for s in services}, "home": home}
    finally:
        # Whatever failed (startup included), no Flowers is left running after the tests.
        process.terminate()
        process.wait(timeout=60)


def wait_until_ready(process, control, home):
    deadline = time.monotonic() + 120
    services = []
    while time.monotonic() < deadline:
        assert process.poll() is None, (home / "flowers.log").read_text()
        try:
            services = get_json(f"{control}/v1/services")
            # The detector ships no model (one is imported by hand): it waits, saying so.
            started = [s for s in services if s["name"] != "detector"]
            detector = [s for s in services if s["name"] == "detector"]
            if (started and all(s["ready_replicas"] >= 1 for s in started)
                    and all(s["state"] == "waiting" and "no promoted version" in s["reason"]
                            for s in detector)):
                return services
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the default services did not all get ready: {services}\n"
                + (home / "flowers.log").read_text())


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    norm = lambda v: sum(x * x for x in v) ** 0.5  # noqa: E731
    return dot / (norm(a) * norm(b))


def test_the_default_runs_the_engines(flowers):
    assert {"embed", "chat", "rag"} <= flowers["services"]


def test_embeddings_with_the_openai_client(flowers):
    client = openai.OpenAI(base_url=flowers["base"] + "/v1", api_key="unused")
    answer = client.embeddings.create(
        model="minilm", input=["This is an example sentence", "Each sentence is converted"])
    first, second = (d.embedding for d in answer.data)
    assert len(first) == 384
    # The model card's pair (crates/engines/reference/minilm_numpy.py computes 0.404559).
    assert abs(cosine(first, second) - 0.4046) < 1e-3
    assert answer.usage.prompt_tokens > 0


def test_bad_embeddings_requests_are_clear_errors(flowers):
    client = openai.OpenAI(base_url=flowers["base"] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="minilm", input=[])
    assert "input" in str(caught.value)


def chat_client(flowers):
    return openai.OpenAI(base_url=flowers["base"] + "/v1", api_key="unused", max_retries=0)


MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def test_chat_with_the_openai_client_is_deterministic_for_a_seed(flowers):
    client = chat_client(flowers)
    answers = [client.chat.completions.create(model="smollm2", messages=MESSAGES, seed=7,
                                              temperature=0.8, max_tokens=24)
               for _ in range(2)]
    first, second = (a.choices[0].message.content for a in answers)
    assert first and first == second
    assert answers[0].model == "smollm2"
    assert answers[0].usage.completion_tokens <= 24
    greedy = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0,
                                            max_tokens=24)
    assert "Paris" in greedy.choices[0].message.content


def test_chat_streams_the_same_text(flowers):
    client = chat_client(flowers)
    whole = client.chat.completions.create(model="smollm2", messages=MESSAGES, seed=3,
                                           max_tokens=16)
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(model="smollm2", messages=MESSAGES, seed=3,
                                                max_tokens=16, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_completions_and_models_with_the_openai_client(flowers):
    client = chat_client(flowers)
    listed = [m.id for m in client.models.list().data]
    assert listed == ["smollm2"]
    answer = client.completions.create(model="smollm2", prompt="One, two, three,",
                                       max_tokens=8, temperature=0, stop=["\n"])
    assert answer.choices[0].text and "\n" not in answer.choices[0].text


def test_bad_chat_requests_are_clear_errors(flowers):
    client = chat_client(flowers)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=[], max_tokens=4)
    assert "messages" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=9)
    assert "temperature" in str(caught.value)


CORPUS = REPO / "crates" / "rag" / "eval" / "corpus"


def cli(flowers, *args):
    """`flowers ARGS…` against this server's gateway; (exit code, stdout, stderr)."""
    out = subprocess.run([flowers_binary(), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "FLOWERS_GATEWAY": flowers["base"],
                              "FLOWERS_API": flowers["control"]})
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def docs(flowers, tmp_path_factory):
    """A collection `docs` of four corpus documents: a folder of three, and one upload."""
    folder = tmp_path_factory.mktemp("docs")
    for name in ("bicycle-maintenance.md", "sourdough.md", "leave-policy.html"):
        (folder / name).write_bytes((CORPUS / name).read_bytes())
    code, out, err = cli(flowers, "rag", "ingest", str(folder), "--collection", "docs")
    assert code == 0, err
    assert "3 files: 3 added" in out, out
    code, out, err = cli(flowers, "rag", "ingest", str(CORPUS / "town-history.txt"),
                         "--collection", "docs")
    assert code == 0 and "added" in out, (out, err)
    return folder


def test_rag_ingest_is_incremental(flowers, docs):
    code, out, err = cli(flowers, "rag", "ingest", str(docs), "--collection", "docs")
    assert code == 0 and "3 unchanged" in out, (out, err)
    (docs / "sourdough.md").write_text((CORPUS / "sourdough.md").read_text() + "\n\nExtra note.\n")
    (docs / "leave-policy.html").unlink()
    code, out, err = cli(flowers, "rag", "ingest", str(docs), "--collection", "docs")
    assert code == 0 and "1 replaced" in out and "1 deleted" in out, (out, err)
    code, out, _ = cli(flowers, "--json", "rag", "collections")
    [collection] = [c for c in json.loads(out) if c["name"] == "docs"]
    assert collection["documents"] == 3
    assert collection["embedding_model"] == "minilm"
    # The embed engine says its Model's version; the collection keeps it with the vectors.
    assert collection["embedding_version"] == "1"


def test_rag_search_finds_the_section(flowers, docs):
    code, out, err = cli(flowers, "--json", "rag", "search", "What torque for the pedal threads?",
                         "--collection", "docs", "-k", "3")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["document"].endswith("bicycle-maintenance.md"), results[0]
    for mode in ("bm25", "dense"):
        code, out, err = cli(flowers, "--json", "rag", "search", "feeding the starter",
                             "--collection", "docs", "--mode", mode)
        assert code == 0, err
        assert json.loads(out)["mode"] == mode


def test_rag_answers_with_citations_through_the_openai_client(flowers, docs):
    client = openai.OpenAI(base_url=flowers["base"] + "/rag/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "How often should the chain be lubricated?"}]
    answer = client.chat.completions.create(model="docs", messages=question, max_tokens=48,
                                            seed=1)
    assert answer.choices[0].message.content
    citations = answer.model_extra["citations"]
    assert citations and citations[0]["index"] == 1
    assert any(c["document"].endswith("bicycle-maintenance.md") for c in citations), citations
    # Streaming: the citations come with the first chunk, the text after.
    chunks = list(client.chat.completions.create(model="docs", messages=question, max_tokens=48,
                                                 seed=1, stream=True))
    assert chunks[0].model_extra.get("citations") == citations
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert "docs" in [m.id for m in client.models.list().data]


def test_rag_ask_prints_the_answer_and_its_sources(flowers, docs):
    code, out, err = cli(flowers, "rag", "ask", "What is the leave policy for sourdough?",
                         "--collection", "docs", "--max-tokens", "24", "--seed", "1")
    assert code == 0, err
    assert "sources:" in out and "[1] " in out, out


def test_rag_bad_input_is_a_clear_error(flowers, docs, tmp_path):
    client = openai.OpenAI(base_url=flowers["base"] + "/rag/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-collection", max_tokens=8,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "no-such-collection" in str(caught.value)
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.md"
    empty.write_text("   \n")
    for path in (binary, empty):
        code, out, err = cli(flowers, "rag", "ingest", str(path), "--collection", "docs")
        assert code == 1 and path.name in err, (path, out, err)
    code, out, err = cli(flowers, "rag", "search", "x", "--collection", "nope")
    assert code == 1 and "nope" in err, err
    code, out, err = cli(flowers, "rag", "ingest", "/no/such/folder", "--collection", "docs")
    assert code == 1 and "/no/such/folder" in err, err
    # Nothing already there was lost.
    code, out, _ = cli(flowers, "--json", "rag", "collections")
    [collection] = [c for c in json.loads(out) if c["name"] == "docs"]
    assert collection["documents"] >= 3
