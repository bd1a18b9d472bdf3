import Foundation
import XCTest
import CausalLM

/// The Jinja chat-template interpreter. Expected strings come from Jinja2 3.1.6 with Hugging Face's settings
/// (`trim_blocks=True, lstrip_blocks=True`, loopcontrols, `raise_exception`, `tojson` = `json.dumps`).
final class ChatTemplateTests: XCTestCase {
    // MARK: Templates

    /// SmolLM2-135M-Instruct's template, verbatim (real newlines inside the quoted strings).
    static let smolLM2 = """
        {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
        You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
        ' }}{% endif %}{{'<|im_start|>' + message['role'] + '
        ' + message['content'] + '<|im_end|>' + '
        '}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
        ' }}{% endif %}
        """

    /// Llama-3 style: `{%- set %}`, `bos_token`, `| trim`, whitespace control, `namespace`, `raise_exception`.
    static let llama3Style = #"""
        {{- bos_token }}
        {%- set ns = namespace(system='', turns=0) %}
        {%- if messages[0]['role'] == 'system' %}
            {%- set ns.system = messages[0]['content'] | trim %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}
        {%- if ns.system %}
        {{- '<|start_header_id|>system<|end_header_id|>\n\n' + ns.system + '<|eot_id|>' }}
        {%- endif %}
        {%- for message in loop_messages %}
            {%- if message['role'] not in ['user', 'assistant'] %}
                {{- raise_exception('Unsupported role: ' + message['role']) }}
            {%- endif %}
            {%- set ns.turns = ns.turns + 1 %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- endif %}
        {#- turns: {{ ns.turns }} #}
        """#

    /// Qwen / ChatML style with attribute access (`messages[0].role`).
    static let qwenStyle = #"""
        {%- if messages[0].role == 'system' %}
            {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
        {%- else %}
            {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
        {%- endif %}
        {%- for message in messages %}
            {%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}
                {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
        {%- endif %}
        """#

    static let conversation = [
        ChatMessage(role: "system", content: "  You are terse.  "),
        ChatMessage(role: "user", content: "Hi\n"),
        ChatMessage(role: "assistant", content: " Hello! "),
        ChatMessage(role: "user", content: "Bye"),
    ]

    static let question = [ChatMessage(role: "user", content: "What is 2+2?")]

    // MARK: SmolLM2 reference renderings

    private struct Reference: Decodable {
        var messages: [ChatMessage]
        var text: String
    }

    private static var fixturesURL: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
    }

    func testSmolLM2MatchesReference() throws {
        let data = try Data(contentsOf: Self.fixturesURL.appendingPathComponent("smollm2/chat_template.json"))
        let refs = try JSONDecoder().decode([Reference].self, from: data)
        XCTAssertFalse(refs.isEmpty)
        let template = try ChatTemplate(Self.smolLM2)
        XCTAssertEqual(template.source, Self.smolLM2)
        for (i, ref) in refs.enumerated() {
            let text = try template.render(messages: ref.messages, addGenerationPrompt: true)
            XCTAssertEqual(text, ref.text, "conversation \(i)")
        }
    }

    func testSmolLM2WithoutGenerationPrompt() throws {
        let text = try ChatTemplate(Self.smolLM2).render(messages: Self.question, addGenerationPrompt: false)
        XCTAssertEqual(text, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    }

    // MARK: Llama-3 and Qwen style templates

    func testLlama3Style() throws {
        let t = try ChatTemplate(Self.llama3Style)
        XCTAssertEqual(
            try t.render(messages: Self.conversation, addGenerationPrompt: true, bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
                + "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                + "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\n")
        XCTAssertEqual(
            try t.render(messages: Self.question, addGenerationPrompt: false, bosToken: "<|begin_of_text|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>")
    }

    func testLlama3StyleRejectsUnknownRole() throws {
        let t = try ChatTemplate(Self.llama3Style)
        XCTAssertThrowsError(try t.render(messages: [ChatMessage(role: "tool", content: "x")], addGenerationPrompt: true)) { error in
            let e = error as? ChatTemplateError
            XCTAssertNotNil(e)
            XCTAssertTrue(e?.description.contains("Unsupported role: tool") == true, "\(error)")
            XCTAssertTrue(e?.description.contains("raise_exception") == true, "\(error)")
        }
    }

    func testQwenStyle() throws {
        let t = try ChatTemplate(Self.qwenStyle)
        XCTAssertEqual(
            try t.render(messages: Self.conversation, addGenerationPrompt: true),
            "<|im_start|>system\n  You are terse.  <|im_end|>\n<|im_start|>user\nHi\n<|im_end|>\n"
                + "<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(
            try t.render(messages: Self.question, addGenerationPrompt: false),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    }

    // MARK: Targeted cases, each checked against Jinja2

    /// Rendered with messages = [system "You are terse.", user "Hi", assistant " Hello! ", user "Bye"],
    /// add_generation_prompt = true, bos "<s>", eos "</s>".
    static let jinjaCases: [(template: String, expected: String)] = [
        ("  {% if true %}\n  x\n  {% endif %}\n  {# comment #}\nend\n",
         "  x\nend"),
        ("a\n  {%- if true %}\n    b\n  {%- endif %}\nc",
         "a    bc"),
        ("a\n  {% if true -%}\n    b\n  {% endif +%}\nc\n  {%+ if true %}d{% endif %}",
         "a\nb\n\nc\n  d"),
        ("{%- for m in messages -%}\n  {{- m.role }}\n{%- endfor %}\n  {{ 'x' }}  \n{{- ' y' }}",
         "systemuserassistantuser  x y"),
        ("x  \n{# comment #}\ny\n  {#- c #}\nz",
         "x  \nyz"),
        ("{% raw %}{{ not rendered }}{% endraw %}|  {% raw -%}  x  {%- endraw %}|",
         "{{ not rendered }}|  x|"),
        ("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}:{{ m.role }};{% endfor %}",
         "1/0/4/3/4/True/False:system;2/1/3/2/4/False/False:user;3/2/2/1/4/False/False:assistant;4/3/1/0/4/False/True:user;"),
        ("{% set x = 1 %}{% for i in [1, 2] %}{% if loop.first %}{% set x = 5 %}{% endif %}{{ x }}{% endfor %}{{ x }}",
         "511"),
        ("{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}",
         "True 2"),
        ("{% for x in [1, 2, 3, 4, 5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
         "13"),
        ("{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in [1, 2, 3] if x != 2 %}{{ x }}{{ loop.length }}{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }},{% endfor %}",
         "empty|1232|2,12,"),
        ("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 'dflt') }}{{ {'a': 1}.get('b') }}",
         "a=1,b=2,1dfltNone"),
        ("{{ [1, 'a', none, true, 1.5, {'a': 1}] }}|{{ (1, 2) }}|{{ \"it's\" }}|{{ 'say \"hi\"' }}|{{ 'tab\\tnew\\nline\\\\ \\'q\\'' }}|{{ True }}{{ None }}",
         "[1, 'a', None, True, 1.5, {'a': 1}]|(1, 2)|it's|say \"hi\"|tab\tnew\nline\\ 'q'|TrueNone"),
        ("{{ 'abc'[::-1] }}|{{ [1, 2, 3][-1] }}|{{ [1, 2, 3][1:] }}|{{ 'abc'[5] }}|{{ [1, 2, 3, 4, 5][1:4:2] }}|{{ [1, 2, 3, 4, 5][-2:] }}|{{ [1, 2, 3, 4, 5][:-2] }}|{{ 'hello'[-3:-1] }}|{{ messages[-1]['content'] }}|{{ messages.0.role }}",
         "cba|3|[2, 3]||[2, 4]|[4, 5]|[1, 2, 3]|ll|Bye|system"),
        ("{{ 1 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}|{{ 'x' ~ 1 ~ none ~ true }}|{{ 1 + 2 * 3 - 4 / 2 }}|{{ [1] + [2] }}|{{ 'ab' * 3 }}|{{ -2 ** 2 }}",
         "0.5|2.0|3|-4|2|1024|1e+20|0.30000000000000004|x1NoneTrue|5.0|[1, 2]|ababab|4"),
        ("{{ 1 == 1.0 }}{{ 1 != 2 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' in 'cat' }}{{ 1 in [1, 2] }}{{ 3 not in [1, 2] }}{{ 'k' in {'k': 1} }}{{ not 1 }}|{{ true and 'x' }}|{{ false or 'y' }}|{{ none or 0 }}|{{ 'a' if false }}|{{ 'x' if 1 > 2 else 'y' }}",
         "TrueTrueTrueFalseTrueTrueTrueTrueFalse|x|y|0||y"),
        ("{{ x is defined }}{{ x is not defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is string }}{{ 1 is number }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ {} is mapping }}{{ messages[0] is mapping }}{{ 1 is integer }}",
         "FalseTrueTrueTrueFalseTrueTrueTrueTrueTrueTrue"),
        ("[{{ x }}]{{ x|default('d') }}{{ x|length }}{{ x ~ 'a' }}{% for i in x %}no{% endfor %}{% if not x %}falsy{% endif %}{{ messages[0].nope is defined }}",
         "[]d0afalsyFalse"),
        ("{{ '  hi  '|trim }}|{{ 'abc'|length }}|{{ 'aBc'|upper }}{{ 'aBc'|lower }}|{{ none|default('d') }}|{{ ''|default('d', true) }}|{{ 1|string ~ 2 }}|{{ [1, 2, 3]|join('-') }}|{{ [1, 2]|first }}{{ [1, 2]|last }}|{{ 'abc'|list }}|{{ 'hello world'|capitalize }}|{{ 'aXbX'|replace('X', 'y') }}",
         "hi|3|ABCabc|None|d|12|1-2-3|12|['a', 'b', 'c']|Hello world|ayby"),
        ("{{ messages|map(attribute='role')|join(',') }}|{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }}|{{ ['b', 'A', 'c']|sort }}|{{ [1, 2, 3]|sum }}",
         "system,user,assistant,user|2|['You are terse.', ' Hello! ']|['A', 'b', 'c']|6"),
        ("{{ messages[1]|tojson }}|{{ {'b': [1, 2.5, none, true, 'x\"\\né'], 'a': {}}|tojson }}|{{ {'k': [1, {'n': none}]}|tojson(indent=2) }}",
         "{\"role\": \"user\", \"content\": \"Hi\"}|{\"b\": [1, 2.5, null, true, \"x\\\"\\né\"], \"a\": {}}|{\n  \"k\": [\n    1,\n    {\n      \"n\": null\n    }\n  ]\n}"),
        ("{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b c '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'abc'.upper() }}{{ 'ABC'.lower() }}|{{ range(3)|list }}{{ range(1, 10, 3)|list }}",
         "x|hi|x | x|['a', 'b', '', 'c']|['a', 'b', 'c']|TrueTrue|ABCabc|[0, 1, 2][1, 4, 7]"),
        ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }}|{% set s %} block {{ 1 + 1 }} {% endset %}[{{ s }}]|{% filter upper %}up {{ 'x' }}{% endfilter %}",
         "Hi Bob! Hi Al?|[ block 2 ]|UP X"),
    ]

    func testMatchesJinja2() throws {
        let messages = [
            ChatMessage(role: "system", content: "You are terse."),
            ChatMessage(role: "user", content: "Hi"),
            ChatMessage(role: "assistant", content: " Hello! "),
            ChatMessage(role: "user", content: "Bye"),
        ]
        for (template, expected) in Self.jinjaCases {
            do {
                let text = try ChatTemplate(template).render(messages: messages, addGenerationPrompt: true,
                                                             bosToken: "<s>", eosToken: "</s>")
                XCTAssertEqual(text, expected, "template: \(template)")
            } catch {
                XCTFail("template: \(template)\nthrew: \(error)")
            }
        }
    }

    func testContextVariables() throws {
        let t = try ChatTemplate(
            "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools|length }}|{{ tools[0]|tojson }}|{{ date_string }}|{{ messages|length }}")
        let tools: JinjaValue = .array([.object(["name": .string("get_weather"), "strict": .bool(true),
                                                 "parameters": .object(["required": .array([.string("city")])])])])
        XCTAssertEqual(
            try t.render(messages: Self.question, addGenerationPrompt: false, bosToken: "<s>", eosToken: "</s>",
                         variables: ["tools": tools, "date_string": "26 Jul 2024"]),
            #"<s>|</s>|False|1|{"name": "get_weather", "parameters": {"required": ["city"]}, "strict": true}|26 Jul 2024|1"#)
        // `variables` may replace the conversation, e.g. with messages that carry extra keys.
        let messages: JinjaValue = [["role": "user", "content": "hi", "name": "ann"]]
        XCTAssertEqual(
            try ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.name }}:{{ m.content }}{% endfor %}")
                .render(messages: [], addGenerationPrompt: true, variables: ["messages": messages]),
            "user:ann:hi")
    }

    // MARK: Errors

    private func assertTemplateError(_ template: String, contains hints: [String],
                                     file: StaticString = #filePath, line: UInt = #line) {
        do {
            let text = try ChatTemplate(template).render(messages: Self.question, addGenerationPrompt: true)
            XCTFail("expected an error, rendered \(text.debugDescription)", file: file, line: line)
        } catch let e as ChatTemplateError {
            for h in hints {
                XCTAssertTrue(e.description.contains(h), "\(e.description.debugDescription) lacks \(h.debugDescription)",
                              file: file, line: line)
            }
            XCTAssertTrue(e.description.hasPrefix("chat template: "), e.description, file: file, line: line)
        } catch {
            XCTFail("expected ChatTemplateError, got \(error)", file: file, line: line)
        }
    }

    func testUnterminatedIf() {
        assertTemplateError("{% if messages %}abc", contains: ["'if'", "1:4", "endif", "never closed"])
        assertTemplateError("{% for m in messages %}{{ m.role }}", contains: ["'for'", "endfor"])
        assertTemplateError("{% for m in messages %}{% endif %}", contains: ["unexpected 'endif'", "'for'"])
    }

    func testUnknownFilter() {
        assertTemplateError("line one\nline two\n{{ 'a' | foo }}", contains: ["unknown filter 'foo'", "at 3:10"])
        assertTemplateError("{{ 'a' is frobnicated }}", contains: ["unknown test 'frobnicated'", "1:11"])
        assertTemplateError("{% include 'other.j2' %}", contains: ["unsupported tag 'include'", "1:4"])
    }

    func testRaiseException() {
        assertTemplateError("{{ raise_exception('x') }}", contains: ["raise_exception", ": x", "1:19"])
        assertTemplateError("{% if messages[0].role != 'system' %}{{ raise_exception('System message required!') }}{% endif %}",
                            contains: ["System message required!"])
    }

    func testUnclosedString() {
        assertTemplateError("{{ 'abc }}", contains: ["unclosed string literal", "1:4"])
        assertTemplateError("{% set x = \"abc %}", contains: ["unclosed string literal", "1:12"])
    }

    func testSyntaxAndRuntimeErrors() {
        assertTemplateError("{{ x", contains: ["never closed", "'}}'"])
        assertTemplateError("{# note", contains: ["comment", "never closed"])
        assertTemplateError("{{ (1 }}", contains: ["expected ')'"])
        assertTemplateError("{{ 1 + }}", contains: ["expression", "1:8"])
        assertTemplateError("{{ x.y }}", contains: ["'x' is undefined"])
        assertTemplateError("{{ 1 + 'a' }}", contains: ["unsupported operand", "'int' and 'str'"])
        assertTemplateError("{% for x in none %}{% endfor %}", contains: ["not iterable"])
        assertTemplateError("{% set ns.x = 1 %}", contains: ["namespace"])
        assertTemplateError("{% break %}", contains: ["'break' outside of a for loop"])
    }

    func testRunawayTemplatesStop() {
        assertTemplateError("{{ 'x' * 100000000 }}", contains: ["MiB"])
        assertTemplateError("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", contains: ["macro", "deep"])
        assertTemplateError("{{ " + String(repeating: "(", count: 10000) + "1" + String(repeating: ")", count: 10000) + " }}",
                            contains: ["nested too deeply"])
        assertTemplateError("{{ 1" + String(repeating: " + 1", count: 10000) + " }}", contains: ["nested too deeply"])
        assertTemplateError("{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns }}", contains: ["inside itself"])
        assertTemplateError("{{ range(1000000000)|length }}", contains: ["range"])
    }
}
