"""The official `openai` client against `drpo-host serve` (run by tests/serve.rs).

Usage: openai_client.py BASE_URL CASE_JSON, where CASE_JSON holds the queries, the answers
`drpo-host generate` gave them and the max_tokens it used, and a long query with its answer.
Checks the model list, each answer (plain and streamed), that a request sent while the long one
streams is answered before it ends (it joined the batch being decoded), and the errors the
client raises; exits non-zero on the first failure.
"""

import json
import sys
import threading

import openai


def main() -> None:
    base_url, case = sys.argv[1], json.loads(sys.argv[2])
    client = openai.OpenAI(base_url=base_url, api_key="not-needed-on-loopback", max_retries=0)

    served = [model.id for model in client.models.list()]
    assert served == ["drpo-aligned"], served

    for query, expected in zip(case["queries"], case["expected"]):
        reply = client.chat.completions.create(
            model="drpo-aligned",
            messages=[{"role": "user", "content": query}],
            max_tokens=case["max_tokens"],
            temperature=0,
        )
        answer = reply.choices[0].message.content
        assert answer == expected, (query, answer, expected)
        assert reply.usage.completion_tokens > 0, reply.usage

        stream = client.chat.completions.create(
            model="drpo-aligned",
            messages=[{"role": "user", "content": query}],
            max_tokens=case["max_tokens"],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) == expected, (query, pieces, expected)
        # A model in process streams as it writes: the text comes in several pieces.
        assert len(pieces) > 1 or len(expected) < 8, pieces
        assert usage is not None and usage.total_tokens == reply.usage.total_tokens, usage

    joins_the_batch_being_decoded(client, case)

    try:
        client.chat.completions.create(
            model="drpo-aligned",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=100_000,
        )
        raise AssertionError("a max_tokens over the limit was accepted")
    except openai.BadRequestError as error:
        assert error.status_code == 400, error
        assert "--max-tokens" in str(error), error

    try:
        client.chat.completions.create(model="drpo-aligned", messages=[])
        raise AssertionError("an empty conversation was accepted")
    except openai.BadRequestError as error:
        assert "messages" in str(error), error

    print("openai client: all checks passed")


def joins_the_batch_being_decoded(client: openai.OpenAI, case: dict) -> None:
    """A short request sent once the long one has streamed a few pieces comes back while the
    long one still streams: it did not wait for the long one's batch to end. Both answers are
    the ones `generate` gave each alone."""
    long = client.chat.completions.create(
        model="drpo-aligned",
        messages=[{"role": "user", "content": case["long_query"]}],
        max_tokens=case["long_max_tokens"],
        temperature=0,
        stream=True,
    )
    short_answer, short_done = [], threading.Event()

    def ask_short() -> None:
        reply = client.chat.completions.create(
            model="drpo-aligned",
            messages=[{"role": "user", "content": case["queries"][0]}],
            max_tokens=case["max_tokens"],
            temperature=0,
        )
        short_answer.append(reply.choices[0].message.content)
        short_done.set()

    pieces, short = [], threading.Thread(target=ask_short)
    answered_while_streaming = False
    for chunk in long:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 3:
                short.start()
        answered_while_streaming |= short_done.is_set()
    short.join()
    assert "".join(pieces) == case["long_expected"], (pieces, case["long_expected"])
    assert short_answer == [case["expected"][0]], (short_answer, case["expected"][0])
    assert answered_while_streaming, "the short request waited for the long one to end"


if __name__ == "__main__":
    main()
