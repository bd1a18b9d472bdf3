import Foundation
import XCTest
import CausalLM

/// The Jinja chat-template interpreter. Expected strings come from Jinja2 3.1.6 with Hugging Face's settings
/// (`trim_blocks=True, lstrip_blocks=True`, loopcontrols, `raise_exception`, `tojson` = `json.dumps`), written to
/// Tests/Fixtures/chat_template/cases.json by Tests/Fixtures/gen/make_chat_template_cases.py.
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

    // MARK: Jinja2's renderings (Tests/Fixtures/chat_template/cases.json)

    struct JinjaCase: Decodable {
        let name: String
        let template: String
        let messages: [ChatMessage]
        let add_generation_prompt: Bool
        let bos_token: String?
        let eos_token: String?
        let expected: String
    }

    static func jinjaCases() throws -> [JinjaCase] {
        struct File: Decodable { let jinja2: String; let cases: [JinjaCase] }
        let file = try JSONDecoder().decode(File.self, from: Fixtures.data("chat_template/cases.json"))
        XCTAssertEqual(file.jinja2, "3.1.6")
        return file.cases
    }

    /// Renders each named fixture case and compares it with Jinja2's output; `template` (if given) must be the
    /// fixture's template, so the static templates above cannot drift from what Jinja2 rendered.
    func assertMatchesJinja2(_ prefix: String, template: String? = nil, count: Int) throws {
        let cases = try Self.jinjaCases().filter { $0.name.hasPrefix(prefix) }
        XCTAssertEqual(cases.count, count, prefix)
        for c in cases {
            if let template { XCTAssertEqual(c.template, template, "\(c.name): the fixture renders another template") }
            do {
                let text = try ChatTemplate(c.template).render(messages: c.messages, addGenerationPrompt: c.add_generation_prompt,
                                                               bosToken: c.bos_token ?? "", eosToken: c.eos_token ?? "")
                XCTAssertEqual(text, c.expected, "\(c.name): template: \(c.template)")
            } catch {
                XCTFail("\(c.name): template: \(c.template)\nthrew: \(error)")
            }
        }
    }

    func testSmolLM2WithoutGenerationPrompt() throws {
        try assertMatchesJinja2("smollm2-", template: Self.smolLM2, count: 1)
    }

    func testLlama3Style() throws {
        try assertMatchesJinja2("llama3-", template: Self.llama3Style, count: 2)
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
        try assertMatchesJinja2("qwen-", template: Self.qwenStyle, count: 2)
    }

    /// 23 targeted templates (whitespace control, comments, raw, loops and loop variables, namespace and scoping,
    /// literals, slicing, arithmetic, comparisons, tests, undefined values, filters, tojson, string methods, macros,
    /// set and filter blocks), rendered with messages = [system "You are terse.", user "Hi", assistant " Hello! ",
    /// user "Bye"], add_generation_prompt = true, bos "<s>", eos "</s>".
    func testMatchesJinja2() throws {
        try assertMatchesJinja2("targeted-", count: 23)
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
