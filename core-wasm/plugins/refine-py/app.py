"""refine-py: a drpo-host strategy written in Python (componentize-py), against wit/strategy.wit.

Hill climbing with a critic: judge the current system prompt's answer to one training query on
two aspects, ask the optimizer for one revision from that judgement, judge the revision on the
next query, and keep it when it scores higher. Every node goes to the host's tree with the
query, the answer and the aspects' scores and rationales, as the Rust strategies record them.

Everything random comes from the `seed` option (sent with every request); nothing reads the
clock, files or the environment, so `drpo-host replay` reproduces a run exactly.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Info,
    LogLevel,
    Message,
    Node,
    Outcome,
    Plan,
    Prompt_Chat,
    Request,
    Role,
    RoleEstimate,
    Sampling,
)

ASPECTS = {
    "Helpfulness": "Does the answer address what was asked, usefully and correctly?",
    "Clarity": "Is the answer easy to follow, well organised and free of padding?",
}

OPTIONS = {
    "steps": ("integer", 3, 1, "Revisions to try, one optimizer call each."),
    "seed": ("integer", 0, 0, "Seed of every request."),
    "max_tokens": ("integer", 1024, 1, "Token limit of every model answer."),
    "temperature": ("number", 0.7, 0.0, "Sampling temperature of the optimizer."),
    "initial_system_prompt": (
        "string",
        "You are a helpful assistant.",
        None,
        "The system prompt to start from.",
    ),
}


def options_schema():
    properties = {}
    for name, (kind, default, minimum, description) in OPTIONS.items():
        prop = {"type": kind, "default": default, "description": description}
        if minimum is not None:
            prop["minimum"] = minimum
        properties[name] = prop
    return {
        "title": "refine-py options",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def parse_options(text):
    given = json.loads(text) if text.strip() not in ("", "null") else {}
    if not isinstance(given, dict):
        raise Err("options must be a JSON object")
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise Err(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(OPTIONS)}")
    options = {name: spec[1] for name, spec in OPTIONS.items()}
    options.update(given)
    for name, (kind, _, minimum, _) in OPTIONS.items():
        value = options[name]
        if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            raise Err(f"option {name} must be an integer, not {value!r}")
        if minimum is not None and value < minimum:
            raise Err(f"option {name} must be at least {minimum}, not {value!r}")
    return options


def request(role, system, user, options, schema=None, temperature=0.0):
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", user))
    sampling = Sampling(temperature, 1.0, options["max_tokens"], 1, options["seed"], [])
    return Request(role, Prompt_Chat(messages), sampling, json.dumps(schema) if schema else None)


def judge_schema():
    entry = {
        "type": "object",
        "additionalProperties": False,
        "required": ["rationale", "score"],
        "properties": {
            "rationale": {"type": "string"},
            "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(ASPECTS),
        "properties": {name: entry for name in ASPECTS},
    }


REVISION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["critique", "new_system_prompt"],
    "properties": {"critique": {"type": "string"}, "new_system_prompt": {"type": "string"}},
}


def first_choice(result):
    """The first choice of a completion result, or None (logging why) when the call failed."""
    if isinstance(result, Err):
        log(LogLevel.WARN, f"a model call failed: {result.value}")
        return None
    choices = result.value.choices
    return choices[0] if choices else None


def log(level, message):
    host.log(level, message)


def evaluate(prompt, query, options):
    """Answers `query` under `prompt` and judges the answer: (reward, details)."""
    [answered] = host.complete([request(Role.BASE, prompt, query.text, options)])
    answer = first_choice(answered) or ""
    rubric = "\n".join(f"- {name}: {question}" for name, question in ASPECTS.items())
    verdict_request = request(
        Role.JUDGE,
        None,
        f"Rate the reply to the query on each aspect from 1 (poor) to 5 (excellent), with a "
        f"one-sentence rationale.\n\nAspects:\n{rubric}\n\n## Query\n{query.text}\n\n"
        f"## Reply\n{answer}\n\nAnswer with a JSON object keyed by aspect name.",
        options,
        judge_schema(),
    )
    [verdict] = host.complete([verdict_request])
    aspects = []
    try:
        judged = json.loads(first_choice(verdict) or "")
        for name in ASPECTS:
            entry = judged[name]
            aspects.append(
                {"name": name, "score": int(entry["score"]), "rationale": str(entry["rationale"])}
            )
    except (ValueError, KeyError, TypeError) as error:
        log(LogLevel.WARN, f"unusable judgement on query {query.id}: {error!r}")
        aspects = []
    reward = sum(a["score"] for a in aspects) / len(aspects) if aspects else 0.0
    details = {"query_id": query.id, "query": query.text, "answer": answer, "aspects": aspects}
    return reward, details


def revise(prompt, details, options):
    """One revision of `prompt` from its judged answer, or None."""
    notes = "\n".join(f"- {a['name']} {a['score']}/5: {a['rationale']}" for a in details["aspects"])
    ask = request(
        Role.OPTIMIZER,
        None,
        f"An assistant ran under this system prompt:\n\n{prompt}\n\nIt was asked:\n"
        f"{details['query']}\n\nIt replied:\n{details['answer']}\n\nA judge said:\n{notes}\n\n"
        "Criticise the system prompt in one or two sentences, then write a complete revised "
        "system prompt that would make the assistant's replies better. Answer with a JSON "
        'object {"critique": ..., "new_system_prompt": ...}.',
        options,
        REVISION_SCHEMA,
        options["temperature"],
    )
    [answered] = host.complete([ask])
    try:
        revised = json.loads(first_choice(answered) or "")["new_system_prompt"].strip()
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log(LogLevel.WARN, f"unusable revision: {error!r}")
        return None
    return revised or None


def record(node_id, parent, depth, prompt, reward, details):
    host.record_node(Node(node_id, parent, depth, prompt, reward, json.dumps(details)))


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return Info(
            "refine-py",
            "0.1.0",
            "Hill climbing with a critic, written in Python: judge the current prompt's answer to "
            "one training query on helpfulness and clarity, ask the optimizer for one revision, "
            "judge it on the next query, keep it when it scores higher.",
            json.dumps(options_schema()),
        )

    def run(self, options):
        options = parse_options(options)
        queries = host.queries(None)
        if not queries:
            raise Err("no training queries to search with")
        prompt = options["initial_system_prompt"]
        reward, details = evaluate(prompt, queries[0], options)
        record(0, None, 0, prompt, reward, details)
        best = (0, prompt, reward, details, 0)  # id, prompt, reward, details, depth
        path = {0: [0]}
        for step in range(1, options["steps"] + 1):
            revised = revise(best[1], best[3], options)
            if revised is None:
                continue
            query = queries[step % len(queries)]
            reward, details = evaluate(revised, query, options)
            record(step, best[0], best[4] + 1, revised, reward, details)
            path[step] = path[best[0]] + [step]
            if reward > best[2]:
                log(LogLevel.INFO, f"step {step}: revision scores {reward:.2f}, kept")
                best = (step, revised, reward, details, best[4] + 1)
            else:
                log(LogLevel.INFO, f"step {step}: revision scores {reward:.2f}, dropped")
        return Outcome(best[1], best[2], path[best[0]], json.dumps({"steps": options["steps"]}))

    def estimate(self, options):
        options = parse_options(options)
        steps = options["steps"]
        tokens = options["max_tokens"]
        roles = [
            RoleEstimate(Role.BASE, 1, 1 + steps, 300, tokens),
            RoleEstimate(Role.JUDGE, 1, 1 + steps, 500, tokens),
            RoleEstimate(Role.OPTIMIZER, steps, steps, 700, tokens),
        ]
        return Plan(roles, None)
