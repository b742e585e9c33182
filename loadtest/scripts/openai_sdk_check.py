#!/usr/bin/env python3
"""Checks that the official openai SDK parses what a server sends.

Run it against the mock cloud (or anything that forwards the
x-mock-scenario header to one) to confirm the wire format, including
streaming with usage and each error as the SDK's typed exception:

    pip install openai
    mock-cloud --addr 127.0.0.1:18911 --api-key sk-test --models mock-model &
    python3 loadtest/scripts/openai_sdk_check.py http://127.0.0.1:18911/v1 sk-test mock-model

Exits non-zero on the first mismatch.
"""

import sys

import openai


def main() -> int:
    base_url, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hello there"}]

    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=5)
    assert reply.choices[0].finish_reason == "length", reply
    assert reply.usage.completion_tokens == 5, reply.usage
    print("chat ok:", reply.choices[0].message.content)

    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert parts and usage is not None and usage.completion_tokens > 0, (parts, usage)
    print("stream ok:", "".join(parts), usage)

    ids = [m.id for m in client.models.list()]
    assert model in ids, ids
    print("models ok:", ids)

    for scenario, error in [
        ('{"fail_status":429}', openai.RateLimitError),
        ('{"fail_status":500}', openai.InternalServerError),
        ('{"fail_status":503}', openai.InternalServerError),
    ]:
        try:
            client.chat.completions.create(
                model=model, messages=messages, extra_headers={"x-mock-scenario": scenario}
            )
            raise AssertionError(f"{scenario} did not fail")
        except error as e:
            print("error ok:", type(e).__name__, e.status_code, e.code)

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e
        print("error ok: NotFoundError", e.code)

    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("wrong key accepted")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e
        print("error ok: AuthenticationError", e.code)

    try:
        for _ in client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            extra_headers={"x-mock-scenario": '{"drop_after_chunks":3}'},
        ):
            pass
        raise AssertionError("dropped stream not noticed")
    except openai.APIConnectionError:
        print("dropped stream ok: APIConnectionError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
