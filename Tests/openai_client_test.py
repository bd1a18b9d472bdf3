"""Talks to a running `causal serve` through the official `openai` Python client and checks the answers.

Usage: openai_client_test.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY [--embedding-model all-MiniLM-L6-v2]
(run by Tests/run-openai-client-test.sh, which starts and stops the server). With --embedding-model, the server also
serves embeddings; they are checked against sentence-transformers' (Tests/Fixtures/minilm/embeddings.json).
"""
import argparse
import array
import json
import math
import os
import sys

import openai
from openai import OpenAI

FRANCE = "What is the capital of France?"
ANSWER = "The capital of France is Paris."

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--embedding-model", help="the server's embedding model id (all-MiniLM-L6-v2), if it serves one")
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    print(f"openai {openai.__version__} -> {args.base_url}")

    models = client.models.list()
    ids = [m.id for m in models.data]
    want = 2 if args.embedding_model else 1
    check(len(ids) == want and (not args.embedding_model or ids[1] == args.embedding_model), f"models.list gives {want} model(s): {ids}")
    model = ids[0]

    # Chat, greedy.
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FRANCE}], temperature=0)
    text = r.choices[0].message.content
    check(text == ANSWER, f"chat greedy answer: {text!r}")
    check(r.choices[0].finish_reason == "stop", f"chat finish_reason: {r.choices[0].finish_reason}")
    check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), f"chat object/id: {r.object} {r.id}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens and r.usage.completion_tokens > 0,
          f"chat usage: {r.usage}")

    # Chat, streaming, with usage.
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FRANCE}], temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(parts) == ANSWER, f"chat stream text: {''.join(parts)!r} in {len(parts)} deltas")
    check(finish == "stop", f"chat stream finish_reason: {finish}")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"chat stream usage: {usage}")

    # Logprobs.
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FRANCE}], temperature=0,
                                       logprobs=True, top_logprobs=2, max_tokens=4)
    lp = r.choices[0].logprobs.content
    check(len(lp) == 4 and all(len(t.top_logprobs) == 2 for t in lp) and lp[0].token == "The",
          f"chat logprobs: {[(t.token, round(t.logprob, 3)) for t in lp]}")
    check(r.choices[0].finish_reason == "length", f"max_tokens=4 gives finish_reason length: {r.choices[0].finish_reason}")

    # Completions (plain text), greedy, and streaming.
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0)
    ctext = c.choices[0].text
    check(len(ctext) > 0 and c.choices[0].finish_reason in ("stop", "length"), f"completion: {ctext!r} ({c.choices[0].finish_reason})")
    check(c.object == "text_completion" and c.usage.completion_tokens <= 12, f"completion object/usage: {c.object} {c.usage}")
    s = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0, stream=True)
    stext = "".join(ch.choices[0].text for ch in s if ch.choices)
    check(stext == ctext, f"completion stream equals non-stream: {stext!r}")

    # Seeded sampling is reproducible.
    kw = dict(model=model, messages=[{"role": "user", "content": "Write a haiku about the sea."}], temperature=0.9, seed=42,
              max_tokens=24)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    check(a == b and len(a) > 0, f"same seed, same text: {a!r}")

    # Errors come back as the client's exception types.
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], n=0)
        check(False, "n=0 is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "n", f"n=0 -> 400 param n ({e.body.get('message')})")
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        check(False, "unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and e.body.get("code") == "model_not_found", f"unknown model -> 404 model_not_found")
    try:
        client.chat.completions.create(model=model, messages=[])
        check(False, "empty messages are refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "messages", f"empty messages -> 400 param messages")
    bad = OpenAI(base_url=args.base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong API key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "wrong API key -> 401")

    check_scoring_and_choices(client, model, args.base_url)
    check_tools_and_structured(client, model)
    check_completions_response_format(client, model)

    if args.embedding_model:
        check_embeddings(client, args.embedding_model, model)

    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


def check_scoring_and_choices(client, model, base_url):
    """echo + logprobs + max_tokens 0 (prompt scoring), prompt lists, n > 1 with a seed, best_of, the tokenizer
    endpoints."""
    import urllib.request

    def post(path, body):
        root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        req = urllib.request.Request(root + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    # Greedy generation, token by token, with each token's log-probability.
    start = "The capital of France is"
    g = client.completions.create(model=model, prompt=start, max_tokens=8, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    gen = g.choices[0].logprobs
    # The same tokens scored as a prompt: echo + logprobs + max_tokens 0.
    ids = post("/tokenize", {"prompt": start + g.choices[0].text, "add_special_tokens": False})["tokens"]
    s = client.completions.create(model=model, prompt=ids, max_tokens=0, temperature=0, logprobs=2, echo=True)
    lp = s.choices[0].logprobs
    P = len(ids) - len(gen.tokens)
    check(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids),
          f"echo scoring: {len(lp.tokens)} prompt tokens, the first without a log-probability")
    check(lp.tokens[P:] == gen.tokens, f"echo scoring: the generated tokens re-tokenize the same: {lp.tokens[P:]}")
    worst = max(abs(a - b) for a, b in zip(lp.token_logprobs[P:], gen.token_logprobs))
    check(worst <= 1e-5, f"echo scoring equals greedy generation's logprobs: max |diff| {worst:.3g} over {len(gen.tokens)} tokens")
    worst_top = max(abs(lp.top_logprobs[P + i][k] - v) for i, t in enumerate(gen.top_logprobs) for k, v in t.items())
    check(worst_top <= 1e-5, f"echo scoring alternatives equal generation's: max |diff| {worst_top:.3g}")
    check(s.choices[0].text == start + g.choices[0].text and s.usage.completion_tokens == 0,
          f"echo with max_tokens 0 returns the prompt's text only: {s.choices[0].text!r}")

    # A list of prompts: one choice per prompt, with its index.
    prompts = ["One, two, three,", "The sky is"]
    m = client.completions.create(model=model, prompt=prompts, max_tokens=6, temperature=0)
    one = [client.completions.create(model=model, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts]
    check(sorted(c.index for c in m.choices) == [0, 1] and [c.text for c in sorted(m.choices, key=lambda c: c.index)] == one,
          f"prompt list: {len(m.choices)} choices equal to the single answers")

    # n = 3 with a seed: three choices, the same again.
    kw = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=1, seed=7, n=3)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    ta = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
    check(len(ta) == 3 and ta == [c.text for c in sorted(b.choices, key=lambda c: c.index)] and len(set(ta)) > 1,
          f"n=3 with seed: 3 choices, reproducible: {ta}")
    c3 = dict(model=model, messages=[{"role": "user", "content": "Tell me a joke."}], max_tokens=12, temperature=1, seed=7, n=3)
    ca = [c.message.content for c in client.chat.completions.create(**c3).choices]
    cb = [c.message.content for c in client.chat.completions.create(**c3).choices]
    check(len(ca) == 3 and ca == cb, f"chat n=3 with seed: reproducible: {ca}")
    bo = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=1, seed=7, best_of=3)
    scored = client.completions.create(**{**kw, "logprobs": 0})
    best = max(scored.choices, key=lambda c: sum(c.logprobs.token_logprobs))
    check(len(bo.choices) == 1 and bo.choices[0].text == best.text, f"best_of=3: the most likely of the 3: {bo.choices[0].text!r}")

    # Tokenizer endpoints (vLLM's shapes).
    info = post("/tokenize", {"prompt": "Hello world"})
    back = post("/detokenize", {"tokens": info["tokens"]})
    check(back["prompt"] == "Hello world" and info["count"] == len(info["tokens"]), f"tokenize/detokenize round trip: {info['tokens']}")


def check_embeddings(client, emodel, chat_model):
    refs_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Fixtures", "minilm", "embeddings.json")
    with open(refs_path) as f:
        refs = [r for r in json.load(f) if r["text"]]

    def cosine(a, b):
        ab = sum(x * y for x, y in zip(a, b))
        return ab / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    texts = [r["text"] for r in refs]
    # The client asks for base64 unless told otherwise, and decodes it.
    e64 = client.embeddings.create(model=emodel, input=texts)
    ef = client.embeddings.create(model=emodel, input=texts, encoding_format="float")
    v64 = [d.embedding for d in e64.data]
    vf = [d.embedding for d in ef.data]
    check(len(v64) == len(texts) and all(len(v) == 384 for v in v64), f"embeddings: {len(v64)} vectors of {len(v64[0])}")
    # The float form is each float32's shortest decimal: it reads back as the same float32.
    check([array.array("f", v) for v in v64] == [array.array("f", v) for v in vf], "embeddings: base64 and float give the same float32s")
    worst = min(cosine(v, r["embedding"]) for v, r in zip(vf, refs))
    check(worst >= 0.99999, f"embeddings vs sentence-transformers: min cosine {worst:.9f}")
    check(ef.usage.prompt_tokens == sum(len(r["ids"]) for r in refs) and ef.model == emodel, f"embeddings usage/model: {ef.usage} {ef.model}")
    ids = client.embeddings.create(model=emodel, input=[refs[0]["ids"][1:-1]], encoding_format="float")
    check(ids.data[0].embedding == vf[0], "embeddings of token ids equal those of the text")
    try:
        client.embeddings.create(model=emodel, input="")
        check(False, "an empty input is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "input", "empty embedding input -> 400 param input")
    try:
        client.embeddings.create(model=chat_model, input="hi")
        check(False, "the chat model gives no embeddings")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "model", "embeddings from the chat model -> 400 param model")


def check_tools_and_structured(client, model):
    """Structured output (`response_format` json_object / json_schema, `chat.completions.parse` with pydantic models)
    and tool calls (`tools` with `tool_choice` required / named / none, a second turn with the tool's result,
    streamed `delta.tool_calls`), and 400s for schemas the server cannot compile."""
    from enum import Enum
    from typing import Annotated, List, Literal, Optional

    from pydantic import BaseModel, Field

    S = Field(max_length=40)

    class Address(BaseModel):
        city: str = S
        country: str = S

    class Person(BaseModel):
        name: str = S
        age: int
        address: Address

    class Item(BaseModel):
        name: str = S
        quantity: int

    class ShoppingList(BaseModel):
        items: List[Item] = Field(min_length=1, max_length=4)

    class Mood(str, Enum):
        positive = "positive"
        negative = "negative"
        neutral = "neutral"

    class Sentiment(BaseModel):
        label: Mood

    class Book(BaseModel):
        title: str = S
        author: str = S
        year: Optional[int]
        genre: Optional[str] = Field(max_length=20)

    class Capital(BaseModel):
        country: str = S
        capital: str = S

    class Colors(BaseModel):
        colors: List[str] = Field(min_length=1, max_length=5)

    class Check(BaseModel):
        is_question: bool
        word_count: int

    class Weather(BaseModel):
        city: str = S
        temperature: float
        unit: Literal["celsius", "fahrenheit"]

    class Attendee(BaseModel):
        name: str = S
        role: Literal["host", "guest"]

    class Meeting(BaseModel):
        title: str = S
        day: Literal["monday", "tuesday", "wednesday", "thursday", "friday"]
        attendees: List[Attendee] = Field(min_length=1, max_length=3)

    class Recipe(BaseModel):
        dish: str = S
        steps: List[Annotated[str, Field(max_length=60)]] = Field(min_length=1, max_length=3)
        vegetarian: Optional[bool]

    cases = [
        (Person, "Describe a person called Anna, 31, who lives in Lyon, France."),
        (ShoppingList, "Make a shopping list for pancakes."),
        (Sentiment, "Classify the sentiment of: 'I love this phone, it is great!'"),
        (Book, "Give details about the book 1984 by George Orwell."),
        (Capital, "What is the capital of Japan?"),
        (Colors, "Name the colors of the French flag."),
        (Check, "Is this a question: 'Where is the station?'"),
        (Weather, "It is 25 degrees celsius in Madrid. Report the weather."),
        (Meeting, "Plan a Monday meeting called Budget with Alice as host and Bob as guest."),
        (Recipe, "Give a short recipe for a tomato salad."),
    ]
    parse = client.chat.completions.parse if hasattr(client.chat.completions, "parse") else client.beta.chat.completions.parse
    ok = 0
    for cls, prompt in cases:
        try:
            r = parse(model=model, messages=[{"role": "user", "content": prompt}], response_format=cls, temperature=0,
                      max_tokens=200)
            parsed = r.choices[0].message.parsed
            good = isinstance(parsed, cls) and r.choices[0].finish_reason == "stop"
            ok += good
            print(f"     parse {cls.__name__}: {r.choices[0].message.content}")
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            print(f"     parse {cls.__name__}: {type(e).__name__}: {e}")
    check(ok == len(cases), f"chat.completions.parse with pydantic models: {ok}/{len(cases)} parsed")

    # json_object: any JSON object.
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Give the name and age of a cat as JSON."}],
                                       response_format={"type": "json_object"}, temperature=0, max_tokens=120)
    content = r.choices[0].message.content
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    check(isinstance(obj, dict) and r.choices[0].finish_reason == "stop", f"json_object: {content!r}")

    # json_schema (strict) cut by max_tokens: finish_reason length.
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"], "additionalProperties": False}
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell a long story."}], temperature=0,
                                       response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}},
                                       max_tokens=6)
    check(r.choices[0].finish_reason == "length" and "".join(r.choices[0].message.content.split()).startswith('{"story"'),
          f"json_schema cut by max_tokens: finish_reason {r.choices[0].finish_reason}, {r.choices[0].message.content!r}")

    # Schemas the server cannot compile: 400 with the reason.
    deep = {"type": "string"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    bad = {
        "deep nesting": deep,
        "huge enum": {"type": "object", "properties": {"x": {"enum": [f"v{i}" for i in range(10000)]}}, "required": ["x"]},
        "recursive $ref without a base case": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
        "unsatisfiable anyOf []": {"type": "object", "properties": {"x": {"anyOf": []}}, "required": ["x"]},
        "required property not in properties": {"type": "object", "properties": {}, "required": ["x"], "additionalProperties": False},
    }
    for what, sch in bad.items():
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                           response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": sch, "strict": True}})
            check(False, f"schema with {what} is refused")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and "schema" in e.body.get("message", ""), f"schema with {what} -> 400: {e.body.get('message')[:150]}")

    # Tools: a required call whose arguments validate, then the tool's result answered.
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}}
    clock = {"type": "function", "function": {
        "name": "get_time", "description": "Get the local time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"]}}}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[weather, clock], tool_choice="required",
                                       temperature=0, max_tokens=80)
    m = r.choices[0].message
    calls = m.tool_calls or []
    args = {}
    try:
        args = json.loads(calls[0].function.arguments) if calls else {}
    except ValueError:
        pass
    valid = bool(calls) and (
        (calls[0].function.name == "get_weather" and set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
         and isinstance(args["city"], str))
        or (calls[0].function.name == "get_time" and set(args) == {"zone"} and isinstance(args["zone"], str)))
    check(valid and r.choices[0].finish_reason == "tool_calls" and calls[0].type == "function" and calls[0].id.startswith("call_"),
          f"tool_choice required: {[(c.function.name, c.function.arguments) for c in calls]} ({r.choices[0].finish_reason})")
    if calls:
        follow = messages + [m.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
        r2 = client.chat.completions.create(model=model, messages=follow, tools=[weather, clock], temperature=0, max_tokens=40)
        check(bool(r2.choices[0].message.content) and r2.choices[0].finish_reason in ("stop", "length"),
              f"second turn with the tool result: {r2.choices[0].message.content!r}")

    # A named function, streamed: delta.tool_calls chunks add up to the call.
    stream = client.chat.completions.create(model=model, messages=messages, tools=[weather, clock], temperature=0, max_tokens=80,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True)
    names, arguments, finish = {}, {}, None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                names[tc.index] = names.get(tc.index, "") + (tc.function.name or "")
                arguments[tc.index] = arguments.get(tc.index, "") + (tc.function.arguments or "")
            finish = c.finish_reason or finish
    sargs = [json_or_none(arguments[i]) for i in sorted(arguments)]
    check(sorted(names) == [0] and set(names.values()) == {"get_weather"}
          and all(isinstance(a, dict) and set(a) == {"city", "unit"} for a in sargs) and finish == "tool_calls",
          f"named tool_choice, streamed: {names} {arguments} ({finish})")

    def valid_call(c):
        a = json_or_none(c.function.arguments)
        return c.type == "function" and c.id.startswith("call_") and isinstance(a, dict) and (
            (c.function.name == "get_weather" and set(a) == {"city", "unit"} and a["unit"] in ("celsius", "fahrenheit"))
            or (c.function.name == "get_time" and set(a) == {"zone"}))

    # tool_choice required: one call unless parallel_tool_calls is true explicitly (docs/server-api.md, a deviation
    # from OpenAI), then one or more; with the end token banned (logit_bias) the model must go on where the grammar
    # lets it, so true gives several calls with distinct ids and runs to max_tokens (content stays null).
    import urllib.request
    root = str(client.base_url).rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    with urllib.request.urlopen(root + "/tokenizer_info", timeout=60) as info:
        eos = json.load(info)["eos_token_id"]
    for parallel in (False, None, True):
        extra = {} if parallel is None else {"parallel_tool_calls": parallel}
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Paris and in Rome?"}],
                                           tools=[weather, clock], tool_choice="required", temperature=0, max_tokens=100,
                                           logit_bias={str(eos): -100}, **extra)
        calls = r.choices[0].message.tool_calls or []
        ok = r.choices[0].message.content is None and (
            len(calls) == 1 and r.choices[0].finish_reason == "tool_calls" if not parallel else
            len(calls) >= 2 and len({c.id for c in calls}) == len(calls) and r.choices[0].finish_reason == "length")
        check(ok and all(valid_call(c) for c in calls),
              f"parallel_tool_calls={parallel}: {len(calls)} call(s) {[c.function.name for c in calls]} ({r.choices[0].finish_reason})")

    # n = 2 with tools: each choice has its own call and finish_reason; streamed, each under its index.
    kw = dict(model=model, messages=[{"role": "user", "content": "Weather or time in Tokyo?"}], tools=[weather, clock],
              tool_choice="required", parallel_tool_calls=False, temperature=1, seed=3, max_tokens=80, n=2)
    r = client.chat.completions.create(**kw)
    check(len(r.choices) == 2 and all(c.finish_reason == "tool_calls" and len(c.message.tool_calls or []) == 1
                                      and valid_call(c.message.tool_calls[0]) for c in r.choices),
          f"n=2 with tools: {[(c.finish_reason, [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]) for c in r.choices]}")
    got = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                got[c.index] = got.get(c.index, "") + (tc.function.name or "") + (tc.function.arguments or "")
    want = {i: c.message.tool_calls[0].function.name + c.message.tool_calls[0].function.arguments
            for i, c in enumerate(r.choices) if c.message.tool_calls}
    check(got == want, f"n=2 with tools, streamed: {got}")

    # tool_choice none: a plain answer.
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FRANCE}], tools=[weather],
                                       tool_choice="none", temperature=0)
    check(r.choices[0].message.content == ANSWER and not r.choices[0].message.tool_calls, f"tool_choice none: {r.choices[0].message.content!r}")


def json_or_none(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def check_completions_response_format(client, model):
    """`response_format` on /v1/completions (an extra field for the client): JSON valid against the schema, with n = 2
    and streaming; a bad schema is a 400."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}

    def valid(t):
        o = json_or_none(t)
        return isinstance(o, dict) and set(o) == {"name", "age"} and isinstance(o["name"], str) and isinstance(o["age"], int)

    r = client.completions.create(model=model, prompt="Ann is 31 years old. Her record as JSON:", temperature=1, seed=5,
                                  max_tokens=60, n=2, extra_body={"response_format": rf})
    texts = [c.text for c in r.choices]
    check(len(texts) == 2 and all(valid(t) and c.finish_reason == "stop" for t, c in zip(texts, r.choices)),
          f"completions response_format json_schema, n=2: {texts}")
    got = {}
    for chunk in client.completions.create(model=model, prompt="Ann is 31 years old. Her record as JSON:", temperature=1, seed=5,
                                           max_tokens=60, n=2, stream=True, extra_body={"response_format": rf}):
        for c in chunk.choices:
            got[c.index] = got.get(c.index, "") + c.text
    check(got == {0: texts[0], 1: texts[1]}, f"completions response_format streamed: {got}")
    r = client.completions.create(model=model, prompt="A JSON object:", temperature=0, max_tokens=60,
                                  extra_body={"response_format": {"type": "json_object"}})
    check(isinstance(json_or_none(r.choices[0].text), dict) and r.choices[0].finish_reason == "stop"
          or r.choices[0].finish_reason == "length" and r.choices[0].text.startswith("{"),
          f"completions response_format json_object: {r.choices[0].text!r} ({r.choices[0].finish_reason})")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=5,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}})
        check(False, "completions response_format with a bad schema -> 400")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "response_format.json_schema.schema",
              f"completions response_format with a bad schema -> 400: {e.body.get('message', '')[:100]}")


if __name__ == "__main__":
    main()
