"""The official OpenAI Python SDK against the edge worker.

The worker here runs as deployed: with a worker token, which the SDK sends
as its API key (`Authorization: Bearer <token>`).
"""

import json
import os
import pathlib
import subprocess
import time
from typing import Literal

import httpx
import jinja2
import openai
import pydantic
import pytest
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
MODEL_ID = "smollm2-135m-instruct"
TOKEN = "sdk-test-worker-token-41d2"


@pytest.fixture(scope="module")
def worker(model_path):
    """A worker of its own, started with EDGE_WORKER_TOKEN; its base URL."""
    env = dict(os.environ, EDGE_WORKER_TOKEN=TOKEN)
    env.pop("EDGE_WORKER_TOKEN_FILE", None)
    proc = subprocess.Popen(
        [str(BIN / "edge-worker"), "--model-path", str(model_path), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    banner = "edge-worker listening on"
    line = proc.stdout.readline().strip()
    try:
        assert line.startswith(banner), f"unexpected first line: {line!r}"
        base = line.removeprefix(banner).strip()
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "worker not ready within 120 s"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def client(worker):
    return openai.OpenAI(base_url=worker + "/v1", api_key=TOKEN, max_retries=0)


def test_chat(client):
    r = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=16,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_with_usage_matches_non_streaming(client):
    kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "List two fruits."}],
        temperature=0,
        max_tokens=20,
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_logprobs_parse_into_the_sdk_types(client):
    kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=2,
    )
    r = client.chat.completions.create(**kwargs)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert [t.token for t in entry.top_logprobs][0] == entry.token
        assert len(entry.top_logprobs) == 2
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [
        entry
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for entry in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]
    plain = client.chat.completions.create(**{**kwargs, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{**kwargs, "logprobs": None})
    assert e.value.param == "top_logprobs"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL_ID]


def test_errors_are_typed(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=4)
    assert e.value.code == "invalid_messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )
    assert e.value.code == "invalid_max_tokens"


def test_usage_matches_an_independent_tokenizer(client, model_path):
    """llama.cpp's tokenizer, reading the same GGUF, counts the prompt the
    chat template produces and the completion text."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Give me one word for happy."},
    ]
    r = client.chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, max_tokens=12
    )
    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    prompt = jinja2.Environment().from_string(template).render(
        messages=messages, add_generation_prompt=True
    )
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert r.usage.prompt_tokens == len(prompt_ids)
    completion_ids = llm.tokenize(
        r.choices[0].message.content.encode(), add_bos=False, special=False
    )
    # Re-tokenising decoded text can merge pieces differently at the
    # boundaries; the count may differ by the end-of-turn token at most.
    assert abs(r.usage.completion_tokens - len(completion_ids)) <= 1, (
        r.usage.completion_tokens,
        len(completion_ids),
        json.dumps(r.choices[0].message.content),
    )


def test_a_wrong_or_missing_token_is_an_authentication_error(worker):
    for key in ["wrong-token", TOKEN[:-1]]:
        stranger = openai.OpenAI(base_url=worker + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            stranger.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert e.value.code == "invalid_worker_token"
        assert e.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
    r = httpx.get(worker + "/v1/worker/load")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_worker_token"
    # Probes and scrapers need no token.
    for path in ["/healthz", "/readyz", "/metrics"]:
        assert httpx.get(worker + path).status_code == 200, path


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}


def _assert_city(text):
    value = json.loads(text)
    assert list(value) == ["city"], text
    assert isinstance(value["city"], str) and len(value["city"]) <= 20, text


def test_json_schema_response_format(client):
    kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
    )
    r = client.chat.completions.create(**kwargs)
    assert r.choices[0].finish_reason == "stop"
    _assert_city(r.choices[0].message.content)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content
    _assert_city(streamed)
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # The worker's energy extension rides along in the streamed usage too.
    assert chunks[-1].usage.model_extra["energy_joules"] > 0
    assert chunks[-1].usage.model_extra["energy_method"] == r.usage.model_extra["energy_method"]


class Capital(pydantic.BaseModel):
    city: Literal["Paris", "London", "Rome", "Berlin"]


def test_structured_output_parses_into_a_pydantic_model(client):
    """The SDK's own structured-output helper: it derives a strict schema
    from the model class and parses the answer back into it."""
    r = client.chat.completions.parse(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=32,
        response_format=Capital,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, Capital)


def test_unsupported_requests_are_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            max_tokens=8,
            tools=[{"type": "function", "function": {
                "name": "weather", "parameters": {"type": "object", "properties": {}}}}],
        )
    assert e.value.code == "unsupported_parameter"
    assert e.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}},
        )
    assert e.value.code == "invalid_value"
    assert e.value.param == "response_format"
