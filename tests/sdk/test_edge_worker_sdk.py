"""The official OpenAI Python SDK against the edge worker."""

import json

import jinja2
import openai
import pytest
from llama_cpp import Llama

MODEL_ID = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(edge_worker):
    return openai.OpenAI(base_url=edge_worker + "/v1", api_key="unused", max_retries=0)


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
