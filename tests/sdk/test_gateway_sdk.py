"""The official OpenAI Python SDK against the gateway (real edge worker, mock cloud).

Every error the gateway documents must reach an SDK user as the SDK's typed
exception with the gateway's error code, since that is what applications
catch.
"""

import json

import httpx
import openai
import pytest

from conftest import EDGE_MODEL_ID, GATEWAY_MAX_BODY_BYTES


def _client(gateway, key="plain"):
    # No retries: the tests assert what a single request gets.
    return openai.OpenAI(base_url=gateway.base, api_key=gateway.keys[key], max_retries=0)


def _messages(text="Say hello."):
    return [{"role": "user", "content": text}]


def test_chat_runs_on_the_idle_edge(gateway):
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=EDGE_MODEL_ID, messages=_messages(), temperature=0, max_tokens=8
    )
    assert raw.headers["x-gateway-backend"] == "edge"
    assert raw.headers["x-gateway-route-reason"]
    assert raw.headers["x-gateway-privacy-class"] == "public"
    assert raw.headers["x-request-id"]
    r = raw.parse()
    assert r.choices[0].message.content.strip()
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_alias_resolves(gateway):
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=_messages(), temperature=0, max_tokens=4
    )
    # "auto" names the edge's model, which the idle edge serves.
    assert raw.headers["x-gateway-backend"] == "edge"
    assert raw.parse().choices[0].message.content is not None


def test_streaming_with_usage(gateway):
    chunks = list(
        _client(gateway).chat.completions.create(
            model=EDGE_MODEL_ID,
            messages=_messages("List two fruits."),
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_without_usage_has_no_usage_chunk(gateway):
    chunks = list(
        _client(gateway).chat.completions.create(
            model=EDGE_MODEL_ID, messages=_messages(), temperature=0, max_tokens=6, stream=True
        )
    )
    assert chunks
    assert all(c.choices for c in chunks), "the gateway's own usage request leaked"


def test_models_lists_ids_and_aliases(gateway):
    ids = {m.id for m in _client(gateway).models.list()}
    assert {EDGE_MODEL_ID, "cloud-only", "auto"} <= ids


def test_models_retrieve(gateway):
    client = _client(gateway)
    assert client.models.retrieve(EDGE_MODEL_ID).id == EDGE_MODEL_ID
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


def test_bad_key_is_authentication_error(gateway):
    client = openai.OpenAI(base_url=gateway.base, api_key="gw-" + "0" * 64, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=EDGE_MODEL_ID, messages=_messages(), max_tokens=4)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_unknown_model_is_not_found_error(gateway):
    with pytest.raises(openai.NotFoundError) as e:
        _client(gateway).chat.completions.create(
            model="no-such-model", messages=_messages(), max_tokens=4
        )
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize(
    "kwargs, code",
    [
        (dict(messages=[], max_tokens=4), "invalid_messages"),
        (dict(messages=_messages(), max_tokens=0), "invalid_max_tokens"),
    ],
)
def test_malformed_request_is_bad_request_error(gateway, kwargs, code):
    with pytest.raises(openai.BadRequestError) as e:
        _client(gateway).chat.completions.create(model=EDGE_MODEL_ID, **kwargs)
    assert e.value.code == code


def test_body_over_the_limit_is_413(gateway):
    huge = "word " * (GATEWAY_MAX_BODY_BYTES // 4)
    with pytest.raises(openai.APIStatusError) as e:
        _client(gateway).chat.completions.create(
            model=EDGE_MODEL_ID, messages=_messages(huge), max_tokens=4
        )
    assert e.value.status_code == 413
    assert e.value.code == "request_too_large"


def test_rate_limit_is_rate_limit_error_with_retry_after(gateway):
    client = _client(gateway, "limited")
    client.chat.completions.create(model=EDGE_MODEL_ID, messages=_messages(), max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=EDGE_MODEL_ID, messages=_messages(), max_tokens=2)
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_exhausted_budget_is_insufficient_quota(gateway):
    with pytest.raises(openai.RateLimitError) as e:
        _client(gateway, "broke").chat.completions.create(
            model=EDGE_MODEL_ID, messages=_messages(), max_tokens=2
        )
    assert e.value.code == "insufficient_quota"


def test_a_spent_budget_is_not_retried_by_the_sdk(gateway):
    # The SDK's default retries (two, with backoff) are on: the gateway's
    # `x-should-retry: false` must stop them, since waiting cannot help.
    sent = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    client = openai.OpenAI(base_url=gateway.base, api_key=gateway.keys["broke"], http_client=http)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=EDGE_MODEL_ID, messages=_messages(), max_tokens=2)
    assert e.value.code == "insufficient_quota"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1


def test_confidential_without_a_private_route_is_503(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        _client(gateway).chat.completions.create(
            model="cloud-only",
            messages=_messages(),
            max_tokens=2,
            extra_headers={"x-privacy-class": "confidential"},
        )
    assert e.value.status_code == 503
    assert e.value.code == "privacy_route_unavailable"


def test_confidential_by_detector_stays_on_the_edge(gateway):
    # For "either" the free cloud is the cheaper choice...
    public = _client(gateway).chat.completions.with_raw_response.create(
        model="either", messages=_messages("Name a colour."), temperature=0, max_tokens=2
    )
    assert public.headers["x-gateway-privacy-class"] == "public"
    assert public.headers["x-gateway-backend"] == "cloud-free"
    # ...so only the detector can keep this one on the premises.
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model="either",
        messages=_messages("My card is 4111 1111 1111 1111."),
        temperature=0,
        max_tokens=2,
    )
    assert raw.headers["x-gateway-privacy-class"] == "confidential"
    assert raw.headers["x-gateway-backend"] == "edge"


def test_no_usable_backend_is_503_no_backend_available(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        _client(gateway).chat.completions.create(
            model="parked-model", messages=_messages(), max_tokens=2
        )
    assert e.value.status_code == 503
    assert e.value.code == "no_backend_available"


def test_every_upstream_failing_is_502_upstream_error(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        _client(gateway).chat.completions.create(
            model="broken-model", messages=_messages(), max_tokens=2
        )
    assert e.value.status_code == 502
    assert e.value.code == "upstream_error"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def test_json_schema_answer_from_the_edge_parses(gateway):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    # Confidential, so only the edge may answer: the JSON comes from its
    # constrained decoding, not from the cloud.
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=EDGE_MODEL_ID,
        messages=_messages("Is the sky blue? Answer in JSON."),
        temperature=0,
        max_tokens=32,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "reply", "schema": schema, "strict": True}},
        extra_headers={"x-privacy-class": "confidential"},
    )
    assert raw.headers["x-gateway-backend"] == "edge"
    answer = json.loads(raw.parse().choices[0].message.content)
    assert answer["answer"] in ("yes", "no")
    assert set(answer) == {"answer"}


def test_tools_go_only_to_a_backend_that_supports_them(gateway):
    # The edge is the cheaper choice, but it reports no tool calling.
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=EDGE_MODEL_ID, messages=_messages("Weather in Paris?"), max_tokens=8,
        tools=[WEATHER_TOOL],
    )
    assert raw.headers["x-gateway-backend"] == "cloud"
    # Without tools the same request stays on the edge.
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=EDGE_MODEL_ID, messages=_messages("Weather in Paris?"), max_tokens=8,
    )
    assert raw.headers["x-gateway-backend"] == "edge"


def test_confidential_tools_without_a_capable_private_backend_are_400(gateway):
    with pytest.raises(openai.BadRequestError) as e:
        _client(gateway).chat.completions.create(
            model=EDGE_MODEL_ID, messages=_messages("Weather in Paris?"), max_tokens=8,
            tools=[WEATHER_TOOL], extra_headers={"x-privacy-class": "confidential"},
        )
    assert e.value.code == "unsupported_capability"
