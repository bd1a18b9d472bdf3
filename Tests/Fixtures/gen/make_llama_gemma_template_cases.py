"""Expected renderings of the real Llama 3.1 / 3.2 and Gemma 2 / 3 instruct chat templates, for
LlamaGemmaTemplateTests.

    python3 Tests/Fixtures/gen/make_llama_gemma_template_cases.py Tests/Fixtures/chat_template

Reads the templates stored in Tests/Fixtures/chat_template/*.jinja (where each came from: the README there) and
renders conversations with transformers' own renderer, `transformers.utils.chat_template_utils.render_jinja_template`
(what `apply_chat_template(..., tokenize=False)` calls: the same compiled Jinja environment, `tools` and `documents`
always passed, None when absent, and the tokenizer's special tokens as extra variables). `strftime_now` is
transformers' `datetime.now().strftime(fmt)`; to keep the fixture stable the module's `datetime` is replaced by one
whose `now()` is NOW below, and each case that depends on it records that date as `now`. Cases whose template calls
`raise_exception` record the message as `error` instead of a text.
"""
import datetime as _dt
import json
import os
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

NOW = _dt.datetime(2026, 3, 5, 14, 30, 0)


class _PinnedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


ctu.datetime = _PinnedDatetime

out_dir = sys.argv[1]


def template(name):
    with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
        return fh.read()


TEMPLATES = {
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "gemma3": ("google-gemma-3-it.jinja", "<bos>", "<eos>"),
    "gemma2": ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
}

SYSTEM_USER = [{"role": "system", "content": "  You are a terse assistant.\n"},
               {"role": "user", "content": "What is 2+2?  "}]
USER = [{"role": "user", "content": "Hello there"}]
MULTI = [{"role": "system", "content": "Answer in French."},
         {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": " Bonjour ! "},
         {"role": "user", "content": "How are you?\n\n"},
         {"role": "assistant", "content": "Très bien, merci. 日本語 🙂"},
         {"role": "user", "content": "Bye"}]
MULTI_NO_SYSTEM = MULTI[1:]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time (ISO 8601) in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]

TOOL_TURN = [{"role": "system", "content": "You can call tools."},
             {"role": "user", "content": "What's the weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"id": "call_1", "type": "function",
                  "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 18, \"sky\": \"clear\"}"},
             {"role": "assistant", "content": "It is 18 °C and clear in Paris."},
             {"role": "user", "content": "And the time?"}]
IPYTHON_TURN = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "ipython", "content": {"temperature": -3, "sky": "snow"}},
                {"role": "tool", "content": ["a", 1, None]}]
BUILTIN_TURN = [{"role": "system", "content": "Search when unsure."},
                {"role": "user", "content": "Who won the 2022 World Cup?"},
                {"role": "assistant", "tool_calls": [
                    {"type": "function",
                     "function": {"name": "brave_search", "arguments": {"query": "2022 World Cup winner"}}}]},
                {"role": "ipython", "content": "Argentina won the 2022 FIFA World Cup."}]
TWO_CALLS = [{"role": "user", "content": "Weather in Paris and Rome?"},
             {"role": "assistant", "tool_calls": [
                 {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                 {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]}]

PARTS = [{"role": "system", "content": [{"type": "text", "text": "Be brief. "}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe this. "},
                                      {"type": "text", "text": "Thanks"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
BAD_ORDER = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
ASSISTANT_FIRST = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]
BAD_CONTENT = [{"role": "user", "content": 42}]

cases = []


def case(name, family, messages, add_generation_prompt, tools=None, now=False, **extra):
    file, bos, eos = TEMPLATES[family]
    src = template(file)
    c = {"name": name, "template": file, "messages": messages, "tools": tools,
         "add_generation_prompt": add_generation_prompt, "bos_token": bos, "eos_token": eos, "variables": extra}
    if now:
        c["now"] = NOW.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        rendered, _ = ctu.render_jinja_template(conversations=[messages], tools=tools, chat_template=src,
                                                add_generation_prompt=add_generation_prompt,
                                                bos_token=bos, eos_token=eos, **extra)
        c["text"] = rendered[0]
    except jinja2.exceptions.TemplateError as e:
        c["error"] = str(e)
    cases.append(c)


for fam in ["llama3.1", "llama3.2"]:
    now = fam == "llama3.2"  # 3.2 calls strftime_now when date_string is not given
    case(f"{fam}-system-user", fam, SYSTEM_USER, True, now=now)
    case(f"{fam}-system-user-no-generation-prompt", fam, SYSTEM_USER, False, now=now)
    case(f"{fam}-user", fam, USER, True, now=now)
    case(f"{fam}-multi-turn", fam, MULTI, True, now=now)
    case(f"{fam}-multi-turn-no-system", fam, MULTI_NO_SYSTEM, False, now=now)
    case(f"{fam}-date-string", fam, SYSTEM_USER, True, date_string="01 Jan 2030")
    case(f"{fam}-tools-in-user-message", fam, SYSTEM_USER, True, tools=TOOLS, now=now)
    case(f"{fam}-tools-in-system", fam, SYSTEM_USER, True, tools=TOOLS, tools_in_user_message=False, now=now)
    case(f"{fam}-tool-call-and-response", fam, TOOL_TURN, True, tools=TOOLS, now=now)
    case(f"{fam}-ipython-structured-content", fam, IPYTHON_TURN, True, tools=[WEATHER], now=now)
    case(f"{fam}-two-tool-calls-error", fam, TWO_CALLS, True, tools=TOOLS, now=now)
    case(f"{fam}-tools-without-user-error", fam, [{"role": "system", "content": "x"}], True, tools=TOOLS, now=now)
case("llama3.1-builtin-tools", "llama3.1", BUILTIN_TURN, True, builtin_tools=["brave_search", "wolfram_alpha"])
case("llama3.1-builtin-and-custom-tools", "llama3.1", BUILTIN_TURN, True, tools=[WEATHER],
     builtin_tools=["brave_search", "code_interpreter"], tools_in_user_message=False)
case("llama3.1-custom-tools", "llama3.1", USER, False, custom_tools=[TIME])

for fam in ["gemma3", "gemma2"]:
    case(f"{fam}-user", fam, USER, True)
    case(f"{fam}-user-no-generation-prompt", fam, USER, False)
    case(f"{fam}-multi-turn-no-system", fam, MULTI_NO_SYSTEM, True)
    case(f"{fam}-system-user", fam, SYSTEM_USER, True)
    case(f"{fam}-multi-turn", fam, MULTI, False)
    case(f"{fam}-bad-role-order-error", fam, BAD_ORDER, True)
case("gemma3-content-parts", "gemma3", PARTS, True)
case("gemma3-assistant-first-error", "gemma3", ASSISTANT_FIRST, True)
case("gemma3-bad-content-error", "gemma3", BAD_CONTENT, True)

with open(os.path.join(out_dir, "llama_gemma_cases.json"), "w", encoding="utf-8") as fh:
    json.dump({"transformers": transformers.__version__, "jinja2": jinja2.__version__, "cases": cases}, fh,
              ensure_ascii=False, indent=1)
    fh.write("\n")
print(len(cases), "cases,", sum("error" in c for c in cases), "errors")
