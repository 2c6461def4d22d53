"""One round of scripts/bench-serve against one server: each request alone, then all at once.

Usage: serve-load.py BASE_URL ENGINE CONCURRENCY MAX_TOKENS [GAP]. The clients of the concurrent
round start GAP seconds apart (default 0: all at once). Prints one JSON line: throughput,
latency percentiles, and how many concurrent answers were lost or differ from the lone answer.
"""

import asyncio
import json
import sys
import time

import openai

# Short questions of our own, one per client (cycled when there are more clients).
TOPICS = [
    "keep basil alive indoors", "explain what a prime number is", "boil an egg",
    "start running as a beginner", "write a polite complaint letter", "save money on groceries",
    "learn to touch type", "care for a cast-iron pan", "fall asleep faster",
    "choose a first programming language", "clean a laptop keyboard", "plan a picnic",
]


def messages(i: int) -> list:
    query = f"How do I {TOPICS[i % len(TOPICS)]}? (question {i})"
    # The inference format `drpo-host serve` builds with no examples, so both servers see the
    # same text.
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"# Query:\n{query}\n\n# Answer:\n<START>"},
    ]


async def ask(client, engine: str, i: int, max_tokens: int, delay: float = 0.0):
    await asyncio.sleep(delay)
    started = time.perf_counter()
    if engine.startswith("drpo"):
        # serve wraps the query itself.
        query = messages(i)[1]["content"].split("\n")[1]
        sent = [{"role": "user", "content": query}]
    else:
        sent = messages(i)
    reply = await client.chat.completions.create(
        model="m", messages=sent, max_tokens=max_tokens, temperature=0,
        stop=None if engine.startswith("drpo") else ["<END>", "<END", "<|eot_id|>"],
    )
    text = reply.choices[0].message.content.strip()
    return i, text, reply.usage.completion_tokens, time.perf_counter() - started


async def main() -> None:
    base_url, engine = sys.argv[1], sys.argv[2]
    concurrency, max_tokens = int(sys.argv[3]), int(sys.argv[4])
    gap = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=3600)
    alone = {}
    for i in range(concurrency):
        _, text, _, _ = await ask(client, engine, i, max_tokens)
        alone[i] = text
    started = time.perf_counter()
    results = await asyncio.gather(
        *(ask(client, engine, i, max_tokens, i * gap) for i in range(concurrency)),
        return_exceptions=True,
    )
    wall = time.perf_counter() - started
    answered = [r for r in results if not isinstance(r, BaseException)]
    latencies = sorted(r[3] for r in answered)

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    print(json.dumps({
        "engine": engine,
        "clients": concurrency,
        "gap_s": gap,
        "wall_s": wall,
        "requests_per_s": len(answered) / wall,
        "completion_tokens_per_s": sum(r[2] for r in answered) / wall,
        "latency_p50_s": percentile(0.50),
        "latency_p90_s": percentile(0.90),
        "latency_p99_s": percentile(0.99),
        "lost": concurrency - len(answered),
        "differ_from_alone": sum(1 for i, text, _, _ in answered if text != alone[i]),
    }))


asyncio.run(main())
