"""Expected renderings of chat templates by Jinja2 with Hugging Face's settings, for ChatTemplateTests.

    python Tests/Fixtures/gen/make_chat_template_cases.py Tests/Fixtures/chat_template/cases.json

Versions: Tests/Fixtures/gen/requirements.txt (jinja2). The environment is the one transformers renders chat
templates in: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols extension,
`raise_exception`, and `tojson` = json.dumps(ensure_ascii=False) (indent passed through). Each case records the
template, the variables and Jinja2's output; the Swift test renders the same template with the same variables.
"""
import json, sys
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise Exception(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "Bye"}]
PADDED_CONVERSATION = [{"role": "system", "content": "  You are terse.  "}, {"role": "user", "content": "Hi\n"},
                       {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "Bye"}]
QUESTION = [{"role": "user", "content": "What is 2+2?"}]

# Model-style templates (also typed into ChatTemplateTests as its static templates; the test checks they are equal).
SMOLLM2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
LLAMA3STYLE = "{{- bos_token }}\n{%- set ns = namespace(system='', turns=0) %}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set ns.system = messages[0]['content'] | trim %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if ns.system %}\n{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}\n{%- endif %}\n{%- for message in loop_messages %}\n    {%- if message['role'] not in ['user', 'assistant'] %}\n        {{- raise_exception('Unsupported role: ' + message['role']) }}\n    {%- endif %}\n    {%- set ns.turns = ns.turns + 1 %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n{#- turns: {{ ns.turns }} #}"
QWENSTYLE = "{%- if messages[0].role == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}"

# Targeted features: whitespace control, comments, raw, loops, namespace, scoping, literals, slicing, arithmetic,
# comparisons, tests, undefined values, filters, tojson, string methods, macros, set blocks, filter blocks.
TARGETED = [
    '  {% if true %}\n  x\n  {% endif %}\n  {# comment #}\nend\n',
    'a\n  {%- if true %}\n    b\n  {%- endif %}\nc',
    'a\n  {% if true -%}\n    b\n  {% endif +%}\nc\n  {%+ if true %}d{% endif %}',
    "{%- for m in messages -%}\n  {{- m.role }}\n{%- endfor %}\n  {{ 'x' }}  \n{{- ' y' }}",
    'x  \n{# comment #}\ny\n  {#- c #}\nz',
    '{% raw %}{{ not rendered }}{% endraw %}|  {% raw -%}  x  {%- endraw %}|',
    '{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}:{{ m.role }};{% endfor %}',
    '{% set x = 1 %}{% for i in [1, 2] %}{% if loop.first %}{% set x = 5 %}{% endif %}{{ x }}{% endfor %}{{ x }}',
    "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}",
    '{% for x in [1, 2, 3, 4, 5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}',
    '{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in [1, 2, 3] if x != 2 %}{{ x }}{{ loop.length }}{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }},{% endfor %}',
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 'dflt') }}{{ {'a': 1}.get('b') }}",
    '{{ [1, \'a\', none, true, 1.5, {\'a\': 1}] }}|{{ (1, 2) }}|{{ "it\'s" }}|{{ \'say "hi"\' }}|{{ \'tab\\tnew\\nline\\\\ \\\'q\\\'\' }}|{{ True }}{{ None }}',
    "{{ 'abc'[::-1] }}|{{ [1, 2, 3][-1] }}|{{ [1, 2, 3][1:] }}|{{ 'abc'[5] }}|{{ [1, 2, 3, 4, 5][1:4:2] }}|{{ [1, 2, 3, 4, 5][-2:] }}|{{ [1, 2, 3, 4, 5][:-2] }}|{{ 'hello'[-3:-1] }}|{{ messages[-1]['content'] }}|{{ messages.0.role }}",
    "{{ 1 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}|{{ 'x' ~ 1 ~ none ~ true }}|{{ 1 + 2 * 3 - 4 / 2 }}|{{ [1] + [2] }}|{{ 'ab' * 3 }}|{{ -2 ** 2 }}",
    "{{ 1 == 1.0 }}{{ 1 != 2 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' in 'cat' }}{{ 1 in [1, 2] }}{{ 3 not in [1, 2] }}{{ 'k' in {'k': 1} }}{{ not 1 }}|{{ true and 'x' }}|{{ false or 'y' }}|{{ none or 0 }}|{{ 'a' if false }}|{{ 'x' if 1 > 2 else 'y' }}",
    "{{ x is defined }}{{ x is not defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is string }}{{ 1 is number }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ {} is mapping }}{{ messages[0] is mapping }}{{ 1 is integer }}",
    "[{{ x }}]{{ x|default('d') }}{{ x|length }}{{ x ~ 'a' }}{% for i in x %}no{% endfor %}{% if not x %}falsy{% endif %}{{ messages[0].nope is defined }}",
    "{{ '  hi  '|trim }}|{{ 'abc'|length }}|{{ 'aBc'|upper }}{{ 'aBc'|lower }}|{{ none|default('d') }}|{{ ''|default('d', true) }}|{{ 1|string ~ 2 }}|{{ [1, 2, 3]|join('-') }}|{{ [1, 2]|first }}{{ [1, 2]|last }}|{{ 'abc'|list }}|{{ 'hello world'|capitalize }}|{{ 'aXbX'|replace('X', 'y') }}",
    "{{ messages|map(attribute='role')|join(',') }}|{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }}|{{ ['b', 'A', 'c']|sort }}|{{ [1, 2, 3]|sum }}",
    '{{ messages[1]|tojson }}|{{ {\'b\': [1, 2.5, none, true, \'x"\\né\'], \'a\': {}}|tojson }}|{{ {\'k\': [1, {\'n\': none}]}|tojson(indent=2) }}',
    "{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b c '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'abc'.upper() }}{{ 'ABC'.lower() }}|{{ range(3)|list }}{{ range(1, 10, 3)|list }}",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }}|{% set s %} block {{ 1 + 1 }} {% endset %}[{{ s }}]|{% filter upper %}up {{ 'x' }}{% endfilter %}",
]

cases = []


def case(name, template, messages, add_generation_prompt, bos_token=None, eos_token=None):
    variables = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    if bos_token is not None: variables["bos_token"] = bos_token
    if eos_token is not None: variables["eos_token"] = eos_token
    cases.append({"name": name, "template": template, "messages": messages,
                  "add_generation_prompt": add_generation_prompt, "bos_token": bos_token, "eos_token": eos_token,
                  "expected": env.from_string(template).render(**variables)})


case("smollm2-question-no-generation-prompt", SMOLLM2, QUESTION, False)
case("llama3-conversation", LLAMA3STYLE, PADDED_CONVERSATION, True, "<|begin_of_text|>", "<|eot_id|>")
case("llama3-question-no-generation-prompt", LLAMA3STYLE, QUESTION, False, "<|begin_of_text|>")
case("qwen-conversation", QWENSTYLE, PADDED_CONVERSATION, True)
case("qwen-question-no-generation-prompt", QWENSTYLE, QUESTION, False)
for i, t in enumerate(TARGETED):
    case(f"targeted-{i}", t, CONVERSATION, True, "<s>", "</s>")

import jinja2
with open(sys.argv[1], "w") as fh:
    json.dump({"jinja2": jinja2.__version__, "cases": cases}, fh, ensure_ascii=False, indent=1)
    fh.write("\n")
print(len(cases), "cases")
