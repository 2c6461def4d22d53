#!/usr/bin/env python3
"""Probes an OpenAI-compatible server for the request features drpo-host uses, and prints, for
each probe, the HTTP status and a short excerpt of the reply. Informational: it always exits 0
unless the server cannot be reached at all. Takes a few seconds on a small local model.

Usage: probe-openai-server.py BASE_URL MODEL   (BASE_URL up to and including /v1)

Probes: a plain chat request; `response_format` of type `json_schema` (exactly as drpo-host sends
it: name, strict, schema); of type `json_object` with a `schema` field (llama.cpp's extension);
a chat request with n=2 (how many choices come back); a raw `/v1/completions` request. Uses the
official `openai` client when it is installed, else the standard library's urllib.
"""

import json
import sys

BASE, MODEL = sys.argv[1].rstrip("/"), sys.argv[2]

# The judge's schema for one aspect, as core-wasm/drpo/src/prompts.rs builds it.
SCHEMA = {
    "type": "object",
    "properties": {
        "Clarity": {
            "type": "object",
            "properties": {
                "rationale": {"type": "string"},
                "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
            },
            "required": ["rationale", "score"],
            "additionalProperties": False,
        }
    },
    "required": ["Clarity"],
    "additionalProperties": False,
}
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
]
JUDGE = [
    {
        "role": "user",
        "content": "Grade the reply 'Paris is the capital of France.' to the query 'What is "
        "the capital of France?' on Clarity, from 1 to 5. Answer with JSON: "
        '{"Clarity": {"rationale": "...", "score": N}}',
    }
]
COMMON = {"model": MODEL, "temperature": 0.7, "top_p": 1.0, "max_tokens": 48, "seed": 7}

PROBES = [
    ("chat", "chat/completions", {**COMMON, "messages": CHAT, "n": 1}),
    (
        "json_schema",
        "chat/completions",
        {
            **COMMON,
            "max_tokens": 96,
            "messages": JUDGE,
            "n": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA},
            },
        },
    ),
    (
        "json_object+schema",
        "chat/completions",
        {
            **COMMON,
            "max_tokens": 96,
            "messages": JUDGE,
            "n": 1,
            "response_format": {"type": "json_object", "schema": SCHEMA},
        },
    ),
    ("n=2", "chat/completions", {**COMMON, "messages": CHAT, "n": 2}),
    (
        "completions raw",
        "completions",
        {**COMMON, "prompt": "The capital of France is", "max_tokens": 16, "n": 1},
    ),
]


def post_urllib(path, body):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{BASE}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer dummy"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def post_openai(client, path, body):
    import openai

    body = dict(body)
    try:
        if path == "chat/completions":
            reply = client.chat.completions.with_raw_response.create(**body)
        else:
            reply = client.completions.with_raw_response.create(**body)
        return reply.http_response.status_code, reply.http_response.text
    except openai.APIStatusError as e:
        return e.status_code, e.response.text


def excerpt(text, limit=220):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def describe(status, text):
    if status != 200:
        return f"HTTP {status}: {excerpt(text, 400)}"
    try:
        reply = json.loads(text)
    except ValueError:
        return f"HTTP {status}, not JSON: {excerpt(text)}"
    choices = reply.get("choices") or []
    parts = [f"HTTP {status}, {len(choices)} choice(s)"]
    for i, choice in enumerate(choices[:2]):
        content = (choice.get("message") or {}).get("content")
        if content is None:
            content = choice.get("text", "")
        valid = ""
        try:
            json.loads(content)
            valid = " [valid JSON]"
        except (TypeError, ValueError):
            pass
        parts.append(
            f"choice {i} finish={choice.get('finish_reason')}{valid}: {excerpt(content or '', 160)!r}"
        )
    usage = reply.get("usage")
    if usage:
        parts.append(f"usage {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}")
    return "; ".join(parts)


def main():
    try:
        import openai

        client = openai.OpenAI(base_url=BASE, api_key="dummy", max_retries=0, timeout=300)
        post = lambda path, body: post_openai(client, path, body)  # noqa: E731
        print(f"probe: openai client {openai.__version__}, {BASE}, model {MODEL}")
    except ImportError:
        post = post_urllib
        print(f"probe: urllib, {BASE}, model {MODEL}")
    for name, path, body in PROBES:
        try:
            status, text = post(path, body)
            print(f"probe {name:<19} /v1/{path}: {describe(status, text)}", flush=True)
        except Exception as e:  # noqa: BLE001 - informational: report and go on
            print(f"probe {name:<19} /v1/{path}: failed: {type(e).__name__}: {excerpt(str(e))}")


if __name__ == "__main__":
    main()
